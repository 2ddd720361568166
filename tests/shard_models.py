"""A model "trained" on ingested shards, for tests of the steps that must reuse its selection.

600 digits of the embedded dataset are written as one shard (partition 0, offsets 0 to
599), and an untrained LeNet-5 (seed 0) is published as if trained on the records below
offset 500, its lineage recording that selection as `headrace train --from-shards` does.
Its test split is then 50 records; the whole dataset's would be 180, some of them records
it trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from serving.model_config import ModelConfig, PreprocessingSpec, TensorSpec
from serving.repository import ModelRepository, ModelVersion
from training.datasets import ShardSource, load_raw
from training.datasets.schema import SCHEMAS
from training.datasets.shards import select_shards, shards_dir, write_shard
from training.export import export_onnx
from training.models import build_model
from training.published import WEIGHTS_FILE, save_weights

INGESTED = 600
SELECTED = 500
SELECTED_TEST_SAMPLES = 50  # the default 10% test fraction of the 500 selected records


def publish_shard_trained(
    folder: Path, name: str, preprocessing: PreprocessingSpec
) -> tuple[ModelVersion, ShardSource]:
    """Shards under `folder / "data"`, the model in `folder / "repo"`; returns the published
    version and the selection it records."""
    raw = load_raw("digits")
    write_shard(
        shards_dir(folder / "data", "digits"), 0, 0, INGESTED - 1,
        raw.data.images[:INGESTED], raw.data.labels[:INGESTED], np.arange(INGESTED),
        [f"r{i}" for i in range(INGESTED)],
    )  # fmt: skip
    source = ShardSource(root=folder / "data", up_to_offset={0: SELECTED})
    selection = select_shards("digits", SCHEMAS["digits"], source)
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    config = ModelConfig(
        name=name,
        max_batch_size=8,
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        preprocessing=preprocessing,
    )
    version = ModelRepository(folder / "repo").publish(
        config,
        export_onnx(model, (1, 28, 28), folder / "m.onnx"),
        architecture="lenet5",
        extra_files={WEIGHTS_FILE: save_weights(model, folder / WEIGHTS_FILE)},
        lineage={"dataset": "digits", "seed": 0, **selection.lineage()},
    )
    return version, source

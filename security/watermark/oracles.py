"""Oracles over the ways a model is served: a gRPC endpoint and a model repository entry.

Both take raw uint8 pixels and turn them into model input exactly as a client
of that model does: the `PreprocessingSpec` the version publishes (in the
served model config over gRPC; in the repository, the one the version records
in its metadata.json, as `ModelRepository.get` hands it out), as `headrace
infer` does. Only those inputs are sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headrace.errors import WatermarkError
from protos import grpc_service_pb2 as pb
from security.watermark.oracle import OracleSpec
from serving.client import InferenceClient
from serving.model_config import PreprocessingSpec
from serving.repository import ModelRepository, ModelVersion
from serving.runner import OnnxModel
from serving.types import DATATYPE_TO_NUMPY


def _to_model_input(
    pixels: np.ndarray, datatype: np.dtype[np.generic], spec: PreprocessingSpec | None
) -> np.ndarray:
    """What a client sends for raw pixels: preprocessed floats, or the pixels themselves."""
    if datatype.kind == "f" and spec is not None:
        return spec.apply(pixels).astype(datatype)
    return pixels.astype(datatype)


def _classes(scores: np.ndarray, rows: int) -> np.ndarray:
    return np.asarray(scores).reshape(rows, -1).argmax(axis=1).astype(np.int64)


class GrpcOracle:
    """A model served by an Open Inference Protocol gRPC server (ours or any other)."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str = "",
        token: str | None = None,
        root_certificates: Path | None = None,
        timeout_s: float = 30.0,
        client: InferenceClient | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self.client = client or InferenceClient(url, token, root_certificates)
        self._input_name = ""
        self._datatype: np.dtype[np.generic] = np.dtype(np.float32)
        self._preprocessing: PreprocessingSpec | None = None
        self._max_batch = 0
        self._spec: OracleSpec | None = None

    def describe(self) -> OracleSpec:
        if self._spec is not None:
            return self._spec
        meta = self.client.model_metadata(self.model, self.version, self.timeout_s)
        request = pb.ModelConfigRequest(name=self.model, version=self.version)
        config = self.client.stub.ModelConfig(
            request, timeout=self.timeout_s, metadata=self.client.metadata
        ).config
        self._max_batch = int(config.max_batch_size)
        if len(meta.inputs) != 1 or len(meta.outputs) < 1:
            raise WatermarkError(
                f"model {self.model!r} has {len(meta.inputs)} inputs; only single-input "
                "classifiers can be checked for a trigger-set watermark"
            )
        batched = self._max_batch > 0
        input_shape = tuple(int(d) for d in meta.inputs[0].shape[1 if batched else 0 :])
        output_shape = [int(d) for d in meta.outputs[0].shape[1 if batched else 0 :]]
        if any(d < 1 for d in input_shape) or not output_shape or output_shape[-1] < 2:
            raise WatermarkError(
                f"model {self.model!r} must have a fixed input shape and a class-score output, "
                f"not input {input_shape} and output {output_shape}"
            )
        self._input_name = meta.inputs[0].name
        self._datatype = DATATYPE_TO_NUMPY[meta.inputs[0].datatype]
        self._preprocessing = self.client.model_config(
            self.model, self.version, self.timeout_s
        ).preprocessing
        self._spec = OracleSpec(
            input_shape=input_shape,
            num_classes=output_shape[-1],
            target=f"grpc {self.url} model {self.model}"
            + (f" version {self.version}" if self.version else ""),
        )
        return self._spec

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.describe()
        inputs = _to_model_input(pixels, self._datatype, self._preprocessing)
        step = max(1, self._max_batch)
        answers = []
        for start in range(0, len(inputs), step):
            chunk = inputs[start : start + step]
            if self._max_batch == 0:
                chunk = chunk[0]  # a model without a batch axis takes one sample per request
            result = self.client.infer(
                self.model, {self._input_name: chunk}, self.version, self.timeout_s
            )
            scores = next(iter(result.outputs.values()))
            answers.append(_classes(scores, 1 if self._max_batch == 0 else len(chunk)))
        return np.concatenate(answers)

    def close(self) -> None:
        self.client.close()


class RepositoryOracle:
    """A model repository entry, run in this process with ONNX Runtime (as the server runs it)."""

    def __init__(self, repository: Path, model: str, version: int | None = None) -> None:
        self.entry: ModelVersion = ModelRepository(repository).get(model, version)
        self.entry.verify()
        config = self.entry.config
        if len(config.inputs) != 1 or not config.outputs:
            raise WatermarkError(
                f"model {model!r} has {len(config.inputs)} inputs; only single-input "
                "classifiers can be checked for a trigger-set watermark"
            )
        self._input = config.inputs[0]
        self._runner = OnnxModel(self.entry.model_file, instances=1, intra_op_threads=1)
        self._spec = OracleSpec(
            input_shape=tuple(config.inputs[0].dims),
            num_classes=config.outputs[0].dims[-1],
            target=f"repository {repository} model {model} version {self.entry.version}",
        )

    def describe(self) -> OracleSpec:
        return self._spec

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        datatype = DATATYPE_TO_NUMPY[self._input.datatype]
        inputs = _to_model_input(pixels, datatype, self.entry.config.preprocessing)
        outputs = self._runner.run({self._input.name: inputs})
        return _classes(next(iter(outputs.values())), len(inputs))

    def close(self) -> None:
        self._runner.close()

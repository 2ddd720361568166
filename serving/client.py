"""A small Open Inference Protocol gRPC client over our own stubs (used by `headrace infer`).

Any OIP client works against the server (Triton's `tritonclient.grpc` among
them); this one exists so the product needs no extra package to send a request.
Inputs go out as raw_input_contents; outputs are read from raw_output_contents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from serving.grpc_convert import tensor_to_raw
from serving.model_config import PreprocessingSpec
from serving.types import DATATYPE_TO_NUMPY, InferTensor


@dataclass
class InferResult:
    """Outputs by name and the model version that answered."""

    model_version: str
    outputs: dict[str, np.ndarray]


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Numpy arrays of a response's raw outputs (BYTES outputs are not decoded here)."""
    arrays: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        dtype = DATATYPE_TO_NUMPY[tensor.datatype].newbyteorder("<")
        arrays[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
    return arrays


@dataclass
class ModelConfigView:
    """What a client needs from a model's config beyond its tensors."""

    preprocessing: PreprocessingSpec | None
    labels: list[str]


class InferenceClient:
    """Blocking client for one server address."""

    def __init__(
        self, url: str, token: str | None = None, root_certificates: Path | None = None
    ) -> None:
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates.read_bytes())
            self.channel = grpc.secure_channel(url, credentials)
        else:
            self.channel = grpc.insecure_channel(url)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def model_metadata(
        self, model: str, version: str = "", timeout_s: float | None = None
    ) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return self.stub.ModelMetadata(request, timeout=timeout_s, metadata=self.metadata)

    def model_config(
        self, model: str, version: str = "", timeout_s: float | None = None
    ) -> ModelConfigView:
        """The served config's tensors plus headrace's preprocessing spec and labels."""
        request = pb.ModelConfigRequest(name=model, version=version)
        config = self.stub.ModelConfig(request, timeout=timeout_s, metadata=self.metadata).config
        params = config.parameters
        preprocessing = None
        if "preprocessing" in params:
            preprocessing = PreprocessingSpec.model_validate_json(
                params["preprocessing"].string_value
            )
        labels = json.loads(params["labels"].string_value) if "labels" in params else []
        return ModelConfigView(preprocessing=preprocessing, labels=labels)

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        version: str = "",
        timeout_s: float | None = None,
    ) -> InferResult:
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            tensor = InferTensor.from_array(name, array)
            request.inputs.add(name=name, datatype=tensor.datatype, shape=array.shape)
            request.raw_input_contents.append(tensor_to_raw(tensor))
        response = self.stub.ModelInfer(request, timeout=timeout_s, metadata=self.metadata)
        return InferResult(response.model_version, decode_outputs(response))

    def close(self) -> None:
        self.channel.close()

"""The one error tree of headrace.

Every error a user can meet derives from `HeadraceError`. Each class carries
the gRPC status name it maps to and the reason written into a DLQ record, so
transports map errors in one place. Messages say what was wrong and how to fix
it. All classes keep a plain `(message)` constructor so they survive pickling
across processes (Ray).
"""

from __future__ import annotations


class HeadraceError(Exception):
    """Base of all headrace errors."""

    grpc_status: str = "INTERNAL"
    reason: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[HeadraceError], tuple[str]]:
        return (type(self), (self.message,))


class ConfigError(HeadraceError):
    """A setting, flag or spec is invalid."""

    grpc_status = "INVALID_ARGUMENT"
    reason = "invalid_config"


class InvalidInput(HeadraceError):
    """A request's input does not match what the model expects."""

    grpc_status = "INVALID_ARGUMENT"
    reason = "invalid_input"


class Unsupported(HeadraceError):
    """A request asks for a protocol feature this server does not offer."""

    grpc_status = "UNIMPLEMENTED"
    reason = "unsupported"


class DatasetError(HeadraceError):
    """A dataset folder is missing, incomplete or malformed."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "invalid_dataset"


class UnknownName(HeadraceError):
    """A registered name (model architecture, dataset) does not exist."""

    grpc_status = "NOT_FOUND"
    reason = "unknown_name"


class ModelNotFound(HeadraceError):
    """A model or model version is not in the repository."""

    grpc_status = "NOT_FOUND"
    reason = "model_not_found"


class RepositoryError(HeadraceError):
    """The model repository is unreadable or a publish failed."""

    grpc_status = "INTERNAL"
    reason = "repository_error"


class ExportMismatch(HeadraceError):
    """An exported ONNX model disagrees with the torch model it came from."""

    grpc_status = "INTERNAL"
    reason = "export_mismatch"


class CheckpointError(HeadraceError):
    """A checkpoint cannot be read or does not fit the run it resumes."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "bad_checkpoint"


class TrainingDiverged(HeadraceError):
    """The loss became NaN or infinite during training."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "training_diverged"


class ModelNotReady(HeadraceError):
    """The model exists but no version of it is loaded and ready."""

    grpc_status = "UNAVAILABLE"
    reason = "model_not_ready"


class BackPressure(HeadraceError):
    """A queue is full; the caller should retry later."""

    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "queue_full"


class DeadlineExceeded(HeadraceError):
    """The request's deadline passed before it could run; it was not executed."""

    grpc_status = "DEADLINE_EXCEEDED"
    reason = "deadline_exceeded"


class ResultTooLarge(HeadraceError):
    """A request ran, but its result is too large to send back on its transport."""

    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "result_too_large"


class Unauthenticated(HeadraceError):
    """A token is missing or wrong."""

    grpc_status = "UNAUTHENTICATED"
    reason = "unauthenticated"


class ModelLoadError(HeadraceError):
    """A model version could not be loaded (bad file, refused by integrity checks)."""

    grpc_status = "INTERNAL"
    reason = "model_load_failed"


class UnsafeModel(ModelLoadError):
    """A model file would make the loader read outside its version folder (or follow a link)."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "unsafe_model"


class ShuttingDown(HeadraceError):
    """The server is draining and refuses new work."""

    grpc_status = "UNAVAILABLE"
    reason = "shutting_down"


class WatermarkError(HeadraceError):
    """A watermark key is missing or unusable, or a model cannot be checked for a watermark."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "watermark_error"


class JobCancelled(HeadraceError):
    """A training job was cancelled on request."""

    grpc_status = "CANCELLED"
    reason = "cancelled"


class WorkerCrashed(HeadraceError):
    """A training worker process died; the job may be retried from its last checkpoint."""

    grpc_status = "UNAVAILABLE"
    reason = "worker_crashed"


class TuningError(HeadraceError):
    """A tuning experiment cannot start, stopped answering, or produced no usable trial."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "tuning_failed"


class CompressionError(HeadraceError):
    """A model cannot be compressed as asked (an architecture or a pairing it cannot handle)."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "compression_failed"


class TransactionsUnsupported(HeadraceError):
    """Exactly-once was asked for on a broker whose Kafka transactions do not hold."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "transactions_unsupported"

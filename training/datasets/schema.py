"""What one record of each dataset looks like: image shape and classes, in one place.

The ingestion worker validates records on `data-<dataset>` against these
schemas, the shard reader checks shards against them, and `headrace data
publish` builds records that fit them. The loaders produce the same shapes
(`tests/unit/test_ingest_records.py` checks the embedded dataset against its schema).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from headrace.errors import UnknownName

DIGIT_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class DatasetSchema(BaseModel):
    """One dataset's record shape: uint8 images of (channels, height, width) and its classes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    classes: tuple[str, ...] = Field(min_length=2, description="Class names; labels index them.")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pixels(self) -> int:
        """Values in one image."""
        return self.channels * self.height * self.width


SCHEMAS: dict[str, DatasetSchema] = {
    "digits": DatasetSchema(name="digits", channels=1, height=28, width=28, classes=DIGIT_CLASSES),
    "mnist": DatasetSchema(name="mnist", channels=1, height=28, width=28, classes=DIGIT_CLASSES),
    "cifar10": DatasetSchema(
        name="cifar10", channels=3, height=32, width=32, classes=CIFAR10_CLASSES
    ),
}


def dataset_schema(name: str) -> DatasetSchema:
    """The schema of a registered dataset, or `UnknownName` listing the known ones."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise UnknownName(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(SCHEMAS))}"
        ) from None

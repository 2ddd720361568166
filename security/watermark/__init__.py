"""Model watermarks: a black-box trigger set and a white-box weight signature, from one secret key.

Leaf modules (numpy, torch and pydantic only, importable anywhere):
`key` (the secret key file and the public watermark id), `derive` (everything
random derived from the key with HMAC-SHA256), `triggers` (trigger inputs and
labels), `stats` (the binomial test), `whitebox` (the weight signature and its
regulariser), `oracle` (the interface a verifier queries) and `verify` (the
tests, given an oracle or a model's weights).

Adapters that reach into the rest of headrace, imported only where they are
used: `hook` (the `TrainingHook` that embeds both marks; `training.hooks`
imports it lazily inside `build_hooks`), `oracles` (gRPC server, repository
entry on ONNX Runtime; no Kafka oracle, see docs/watermark.md), `weights`
(reading a published version's ONNX initializers and torch weights) and
`embed` (train or fine-tune a marked model and publish it).

The key stays with its owner: a verifier only ever sends trigger inputs.
"""

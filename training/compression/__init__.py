"""Model compression: channel pruning, knowledge distillation, quantization-aware training.

`headrace compress` runs `recipe.compress_published(CompressConfig)`: a
published version -> [`pruning.prune_channels`] -> fine-tuning with the
training loop (+ `distillation.DistillationHook`) -> [`quantization.QatSession`,
NNI's QATQuantizer] -> ONNX (`onnx_export`: int8 / packed int4 weights) ->
checked and measured on ONNX Runtime (`measure`) -> published as a new
version. `report` compares the original with each compressed version.

May import `serving` (repository), `security` (the fine-tuning recipe) and the
rest of `training`. Importing the package loads nothing; NNI loads when used.
"""

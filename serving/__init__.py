"""serving: the model repository and, later, the runner, batcher and gRPC server.

May import `security`, `protos` and the leaf modules `headrace.errors` /
`headrace.settings`.
"""

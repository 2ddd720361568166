"""streams: the Faust app, topic catalogue, Kafka message schemas and agents.

May import `serving`, `training`, `protos` and the leaf modules
`headrace.errors` / `headrace.settings`.
"""

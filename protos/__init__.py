"""protos: .proto files and the Python code generated from them (`make protos`)."""

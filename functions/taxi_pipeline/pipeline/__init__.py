"""The pipeline: ports, the steps over them, the CloudEvent handlers, verification."""

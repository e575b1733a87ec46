"""The steps: plain functions over ports, the same in the cloud and locally."""

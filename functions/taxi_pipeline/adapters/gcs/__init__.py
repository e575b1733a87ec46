"""Cloud Storage: the cloud lake and its locks."""

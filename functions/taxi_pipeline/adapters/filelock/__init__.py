"""Lock files shared by the processes of a home (filelock)."""

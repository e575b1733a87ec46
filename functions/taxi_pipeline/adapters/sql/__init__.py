"""The SQL every SQL warehouse shares, written once (:mod:`.statements`, :mod:`.history`), and
the few hooks in which the warehouses' dialects differ (:mod:`.dialects`)."""

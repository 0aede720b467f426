an existing export

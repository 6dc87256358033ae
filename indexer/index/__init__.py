"""The index format: a versioned directory of FAISS vectors, a SQLite catalog, the small
copies, their projection and checksums (`store`, `vectors`, `catalog`, `lowres`, `reader`,
`verify`). The server reads indexes only through `reader.open_index`.
"""

"""The network side: image bytes -> prepared views -> EfficientNet-Lite0 -> descriptor.

Preprocessing (`preprocess`), the network (`efficientnet`, `encoder`), the registry PCA the
encoder applies (`projection`), and its training (`augment`, `train`, `weights/`). Nothing
here knows about an index on disk.
"""

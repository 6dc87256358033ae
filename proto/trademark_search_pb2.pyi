from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("request_id", "image", "k", "threshold", "region", "filters", "text", "read_words")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    READ_WORDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: bytes
    k: int
    threshold: float
    region: Region
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    text: str
    read_words: bool
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[bytes] = ..., k: _Optional[int] = ..., threshold: _Optional[float] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., text: _Optional[str] = ..., read_words: _Optional[bool] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("column", "values")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    column: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, column: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("serial", "score", "rank", "name", "same_mark", "metadata", "text", "text_score")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAME_MARK_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_SCORE_FIELD_NUMBER: _ClassVar[int]
    serial: str
    score: float
    rank: int
    name: str
    same_mark: bool
    metadata: str
    text: str
    text_score: float
    def __init__(self, serial: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., name: _Optional[str] = ..., same_mark: _Optional[bool] = ..., metadata: _Optional[str] = ..., text: _Optional[str] = ..., text_score: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class MarkAnswer(_message.Message):
    __slots__ = ("box", "exists", "matched_serial", "top_score", "confidence", "matches", "detection_score", "words", "words_score", "matched_by")
    BOX_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    TOP_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    WORDS_SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BY_FIELD_NUMBER: _ClassVar[int]
    box: Region
    exists: bool
    matched_serial: str
    top_score: float
    confidence: float
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    detection_score: float
    words: str
    words_score: float
    matched_by: str
    def __init__(self, box: _Optional[_Union[Region, _Mapping]] = ..., exists: _Optional[bool] = ..., matched_serial: _Optional[str] = ..., top_score: _Optional[float] = ..., confidence: _Optional[float] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., detection_score: _Optional[float] = ..., words: _Optional[str] = ..., words_score: _Optional[float] = ..., matched_by: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("request_id", "exists", "matched_serial", "top_score", "threshold", "matches", "error", "confidence", "filtered", "candidates", "marks", "words", "words_score", "matched_by", "words_threshold")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    TOP_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    WORDS_SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BY_FIELD_NUMBER: _ClassVar[int]
    WORDS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    exists: bool
    matched_serial: str
    top_score: float
    threshold: float
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    error: Error
    confidence: float
    filtered: bool
    candidates: int
    marks: _containers.RepeatedCompositeFieldContainer[MarkAnswer]
    words: str
    words_score: float
    matched_by: str
    words_threshold: float
    def __init__(self, request_id: _Optional[str] = ..., exists: _Optional[bool] = ..., matched_serial: _Optional[str] = ..., top_score: _Optional[float] = ..., threshold: _Optional[float] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., confidence: _Optional[float] = ..., filtered: _Optional[bool] = ..., candidates: _Optional[int] = ..., marks: _Optional[_Iterable[_Union[MarkAnswer, _Mapping]]] = ..., words: _Optional[str] = ..., words_score: _Optional[float] = ..., matched_by: _Optional[str] = ..., words_threshold: _Optional[float] = ...) -> None: ...

class GetIndexInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("count", "dim", "metric", "encoder", "index_type", "threshold", "index_version", "created", "max_k", "threshold_method", "decision", "family_similarity", "filterable_columns", "words_threshold", "marks_with_words")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_METHOD_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FILTERABLE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    WORDS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MARKS_WITH_WORDS_FIELD_NUMBER: _ClassVar[int]
    count: int
    dim: int
    metric: str
    encoder: str
    index_type: str
    threshold: float
    index_version: str
    created: str
    max_k: int
    threshold_method: str
    decision: str
    family_similarity: float
    filterable_columns: _containers.RepeatedScalarFieldContainer[str]
    words_threshold: float
    marks_with_words: int
    def __init__(self, count: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., encoder: _Optional[str] = ..., index_type: _Optional[str] = ..., threshold: _Optional[float] = ..., index_version: _Optional[str] = ..., created: _Optional[str] = ..., max_k: _Optional[int] = ..., threshold_method: _Optional[str] = ..., decision: _Optional[str] = ..., family_similarity: _Optional[float] = ..., filterable_columns: _Optional[_Iterable[str]] = ..., words_threshold: _Optional[float] = ..., marks_with_words: _Optional[int] = ...) -> None: ...

class GetThumbnailsRequest(_message.Message):
    __slots__ = ("serials",)
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, serials: _Optional[_Iterable[str]] = ...) -> None: ...

class Thumbnail(_message.Message):
    __slots__ = ("serial", "name", "image")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    serial: str
    name: str
    image: bytes
    def __init__(self, serial: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class GetThumbnailsResponse(_message.Message):
    __slots__ = ("thumbnails",)
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    thumbnails: _containers.RepeatedCompositeFieldContainer[Thumbnail]
    def __init__(self, thumbnails: _Optional[_Iterable[_Union[Thumbnail, _Mapping]]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("previous_version", "index_version", "count")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    previous_version: str
    index_version: str
    count: int
    def __init__(self, previous_version: _Optional[str] = ..., index_version: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

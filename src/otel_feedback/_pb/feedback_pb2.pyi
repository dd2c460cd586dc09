from opentelemetry.proto.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnnotatorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANNOTATOR_KIND_UNSPECIFIED: _ClassVar[AnnotatorKind]
    ANNOTATOR_KIND_HUMAN: _ClassVar[AnnotatorKind]
    ANNOTATOR_KIND_LLM: _ClassVar[AnnotatorKind]
    ANNOTATOR_KIND_CODE: _ClassVar[AnnotatorKind]
ANNOTATOR_KIND_UNSPECIFIED: AnnotatorKind
ANNOTATOR_KIND_HUMAN: AnnotatorKind
ANNOTATOR_KIND_LLM: AnnotatorKind
ANNOTATOR_KIND_CODE: AnnotatorKind

class Target(_message.Message):
    __slots__ = ("trace_id", "span_id", "attribute_key", "attribute_value")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_VALUE_FIELD_NUMBER: _ClassVar[int]
    trace_id: bytes
    span_id: bytes
    attribute_key: str
    attribute_value: str
    def __init__(self, trace_id: _Optional[bytes] = ..., span_id: _Optional[bytes] = ..., attribute_key: _Optional[str] = ..., attribute_value: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: AnnotatorKind
    id: str
    def __init__(self, kind: _Optional[_Union[AnnotatorKind, str]] = ..., id: _Optional[str] = ...) -> None: ...

class PatchRequest(_message.Message):
    __slots__ = ("id", "target", "attributes", "name", "label", "score", "explanation", "expected", "error", "source", "time_unix_nano", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    target: Target
    attributes: _containers.RepeatedCompositeFieldContainer[_common_pb2.KeyValue]
    name: str
    label: str
    score: float
    explanation: str
    expected: str
    error: str
    source: Source
    time_unix_nano: int
    metadata: _containers.RepeatedCompositeFieldContainer[_common_pb2.KeyValue]
    def __init__(self, id: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., attributes: _Optional[_Iterable[_Union[_common_pb2.KeyValue, _Mapping]]] = ..., name: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., explanation: _Optional[str] = ..., expected: _Optional[str] = ..., error: _Optional[str] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., time_unix_nano: _Optional[int] = ..., metadata: _Optional[_Iterable[_Union[_common_pb2.KeyValue, _Mapping]]] = ...) -> None: ...

class PatchResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class BatchPatchRequest(_message.Message):
    __slots__ = ("patches",)
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    patches: _containers.RepeatedCompositeFieldContainer[PatchRequest]
    def __init__(self, patches: _Optional[_Iterable[_Union[PatchRequest, _Mapping]]] = ...) -> None: ...

class BatchPatchResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

"""Read the few facts the loader checks out of an ONNX file, without the `onnx` package.

ONNX files are protobuf messages. This walks the wire format just far enough to list (a) every tensor stored as
external data, with its `location`, wherever it sits (graph initializers, sparse initializers, Constant-node
attributes, subgraphs of If/Loop/Scan, functions, training graphs), and (b) the operator domains the model
imports and those its nodes use. Field numbers are those of onnx/onnx.proto3. Anything that does not parse is reported as a corrupt file.
"""

from dataclasses import dataclass, field

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# ModelProto
_MODEL_OPSET_IMPORT, _MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 8, 7, 20, 25
# GraphProto
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
# NodeProto / FunctionProto
_NODE_ATTRIBUTE, _NODE_DOMAIN, _FUNCTION_NODE, _FUNCTION_OPSET_IMPORT = 5, 7, 7, 9
# AttributeProto
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
# TensorProto / SparseTensorProto / StringStringEntryProto / OperatorSetIdProto
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_ENTRY_KEY, _ENTRY_VALUE, _OPSET_DOMAIN = 1, 2, 1
# TrainingInfoProto: initialization, algorithm (both GraphProto)
_TRAINING_GRAPHS = (1, 2)
_EXTERNAL = 1
_MAX_DEPTH = 64


class ProtoError(ValueError):
    """The bytes are not a well-formed ONNX ModelProto."""


@dataclass
class ExternalTensor:
    name: str
    location: str | None  # None: marked external but no location given


@dataclass
class ModelFacts:
    external: list[ExternalTensor] = field(default_factory=list)
    domains: set[str] = field(default_factory=set)  # imported operator sets
    node_domains: set[str] = field(default_factory=set)  # domains of the nodes actually present


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtoError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, wire type, value): an int for scalars, (start, end) for length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == _I64:
            pos += 8
            yield number, wire, None
        elif wire == _I32:
            pos += 4
            yield number, wire, None
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ProtoError("a length-delimited field runs past the end of its message (truncated file?)")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise ProtoError(f"unsupported wire type {wire}")
    if pos != end:
        raise ProtoError("a fixed-size field runs past the end of its message (truncated file?)")


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    try:
        return bytes(buf[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtoError("a string field is not UTF-8") from err


class _Walker:
    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.facts = ModelFacts()

    def model(self) -> ModelFacts:
        seen_graph = False
        for number, wire, value in _fields(self.buf, 0, len(self.buf)):
            if wire != _LEN:
                continue
            if number == _MODEL_GRAPH:
                seen_graph = True
                self.graph(value, 0)
            elif number == _MODEL_OPSET_IMPORT:
                self.opset(value)
            elif number == _MODEL_FUNCTIONS:
                self.function(value, 0)
            elif number == _MODEL_TRAINING_INFO:
                for n, w, v in _fields(self.buf, *value):
                    if w == _LEN and n in _TRAINING_GRAPHS:
                        self.graph(v, 0)
        if not seen_graph:
            raise ProtoError("no graph in the model")
        return self.facts

    def opset(self, span: tuple[int, int]) -> None:
        domain = ""
        for number, wire, value in _fields(self.buf, *span):
            if number == _OPSET_DOMAIN and wire == _LEN:
                domain = _text(self.buf, value)
        self.facts.domains.add(domain)

    def graph(self, span: tuple[int, int], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ProtoError("subgraphs nested too deeply")
        for number, wire, value in _fields(self.buf, *span):
            if wire != _LEN:
                continue
            if number == _GRAPH_NODE:
                self.node(value, depth)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(value)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(value)

    def function(self, span: tuple[int, int], depth: int) -> None:
        for number, wire, value in _fields(self.buf, *span):
            if wire == _LEN and number == _FUNCTION_NODE:
                self.node(value, depth)
            elif wire == _LEN and number == _FUNCTION_OPSET_IMPORT:
                self.opset(value)

    def node(self, span: tuple[int, int], depth: int) -> None:
        domain = ""
        for number, wire, value in _fields(self.buf, *span):
            if wire == _LEN and number == _NODE_ATTRIBUTE:
                self.attribute(value, depth)
            elif wire == _LEN and number == _NODE_DOMAIN:
                domain = _text(self.buf, value)
        self.facts.node_domains.add(domain)

    def attribute(self, span: tuple[int, int], depth: int) -> None:
        for number, wire, value in _fields(self.buf, *span):
            if wire != _LEN:
                continue
            if number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(value)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(value, depth + 1)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                self.sparse(value)

    def sparse(self, span: tuple[int, int]) -> None:
        for number, wire, value in _fields(self.buf, *span):
            if wire == _LEN and number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(value)

    def tensor(self, span: tuple[int, int]) -> None:
        name, location, external = "", None, False
        for number, wire, value in _fields(self.buf, *span):
            if number == _TENSOR_NAME and wire == _LEN:
                name = _text(self.buf, value)
            elif number == _TENSOR_DATA_LOCATION and wire == _VARINT:
                external = value == _EXTERNAL
            elif number == _TENSOR_EXTERNAL_DATA and wire == _LEN:
                key = entry = None
                for n, w, v in _fields(self.buf, *value):
                    if w == _LEN and n == _ENTRY_KEY:
                        key = _text(self.buf, v)
                    elif w == _LEN and n == _ENTRY_VALUE:
                        entry = _text(self.buf, v)
                if key == "location":
                    location = entry
        if external or location is not None:
            self.facts.external.append(ExternalTensor(name, location))


def read_model_facts(data: bytes) -> ModelFacts:
    """External-data tensors and opset domains of a serialized ONNX model; `ProtoError` if it does not parse."""
    return _Walker(data).model()

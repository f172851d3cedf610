"""The part of the ONNX file format that the deploy export writes, as protobuf messages
of the project's own, so that a deploy does not import the onnx package (about a
second of start-up, most of it ml_dtypes).

The messages carry ONNX's own field numbers and proto2 rules (onnx.proto, "syntax =
proto2"), so the bytes are those the onnx package writes for the same model (tested
against it). They live in a private descriptor pool: a process that also imports onnx
keeps its own `onnx.*` types. Works on protobuf 3.19 to 7.x.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# TensorProto.DataType and AttributeProto.AttributeType values (onnx.proto).
FLOAT, INT8 = 1, 3
ATTR_FLOAT, ATTR_INT = 1, 2

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int64": _T.TYPE_INT64, "int32": _T.TYPE_INT32, "float": _T.TYPE_FLOAT, "string": _T.TYPE_STRING,
            "bytes": _T.TYPE_BYTES}
PACKAGE = "vaiq_onnx"

# message: [(field, number, type or message name, repeated)], in onnx.proto's numbers.
SCHEMA = {
    "OperatorSetIdProto": [("domain", 1, "string", False), ("version", 2, "int64", False)],
    "AttributeProto": [("name", 1, "string", False), ("f", 2, "float", False), ("i", 3, "int64", False),
                       ("type", 20, "int32", False)],   # an enum on the wire is a varint, as int32
    "TensorProto": [("dims", 1, "int64", True), ("data_type", 2, "int32", False), ("name", 8, "string", False),
                    ("raw_data", 9, "bytes", False)],
    "Dimension": [("dim_value", 1, "int64", False), ("dim_param", 2, "string", False)],
    "TensorShapeProto": [("dim", 1, "Dimension", True)],
    "TensorTypeProto": [("elem_type", 1, "int32", False), ("shape", 2, "TensorShapeProto", False)],
    "TypeProto": [("tensor_type", 1, "TensorTypeProto", False)],
    "ValueInfoProto": [("name", 1, "string", False), ("type", 2, "TypeProto", False)],
    "NodeProto": [("input", 1, "string", True), ("output", 2, "string", True), ("name", 3, "string", False),
                  ("op_type", 4, "string", False), ("attribute", 5, "AttributeProto", True),
                  ("domain", 7, "string", False)],
    "GraphProto": [("node", 1, "NodeProto", True), ("name", 2, "string", False),
                   ("initializer", 5, "TensorProto", True), ("input", 11, "ValueInfoProto", True),
                   ("output", 12, "ValueInfoProto", True)],
    "ModelProto": [("ir_version", 1, "int64", False), ("producer_name", 2, "string", False),
                   ("graph", 7, "GraphProto", False), ("opset_import", 8, "OperatorSetIdProto", True)],
}


def _file_descriptor():
    proto = descriptor_pb2.FileDescriptorProto(name="vaiq/onnx_subset.proto", package=PACKAGE, syntax="proto2")
    for name, fields in SCHEMA.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            f = message.field.add(name=field, number=number,
                                  label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if kind in _SCALARS:
                f.type = _SCALARS[kind]
            else:
                f.type, f.type_name = _T.TYPE_MESSAGE, ".{}.{}".format(PACKAGE, kind)
    return proto


def _classes():
    pool = descriptor_pool.DescriptorPool()
    proto = _file_descriptor()
    pool.AddSerializedFile(proto.SerializeToString())
    file = pool.FindFileByName(proto.name)
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:   # protobuf < 4.21
        factory = message_factory.MessageFactory(pool)
        get_class = factory.GetPrototype
    return {name: get_class(file.message_types_by_name[name]) for name in SCHEMA}


globals().update(_classes())

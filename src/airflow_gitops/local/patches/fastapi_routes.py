"""The API server builds each distinct route type of FastAPI once (:func:`patch_fastapi_route_building`)."""

from __future__ import annotations

from .guard import Guard, wrap

GUARD = Guard(
    "fastapi_routes",
    "the API server builds each distinct FastAPI route type once",
    "fastapi",
    "FastAPI",
    {
        "0.136.3": {
            "fastapi._compat.v2:ModelField.__post_init__": (
                "129eb531eb89cb4ab7fd085d99a7fc67bfbee2f6ac01e153846d399f13e1996c"
            ),
            # relied on: what a FieldInfo is keyed by
            "fastapi._compat.v2:asdict": "a5005ec14cf8908c418af478c200e458e07313d6a8bec96246ce4b0e9b4a9c2e",
            "fastapi.dependencies.utils:get_typed_signature": (
                "9a4baef3c22a8bd8b472712104f6eae5531313c75cd28bd355f047a75cd47d0d"
            ),
            "fastapi.routing:get_typed_return_annotation": (
                "bba55d8a5057c5a7c5cf2ad8713a57d815c01f4ebcca7a57baa4ff0fa39b9302"
            ),
        }
    },
)


class _Uncacheable(Exception):
    pass


def _key(value):
    """A hashable key equal only for values FastAPI may treat alike: hashable values by type and equality
    (classes, functions and objects without ``__eq__`` by identity), lists/tuples/dicts element-wise;
    anything else is not cached (raises ``_Uncacheable``)."""
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple(sorted(((_key(k), _key(v)) for k, v in value.items()), key=repr)))
    try:
        hash(value)
    except TypeError:
        raise _Uncacheable from None
    return (type(value), value)


def patch_fastapi_route_building() -> bool:
    """Build each distinct pydantic ``TypeAdapter`` behind FastAPI's route fields once, and each endpoint's
    signature once, in this process (the API server: its start is ~40 % route building).

    ``fastapi.include_router`` re-creates every route of the included router, and each new route makes a
    ``ModelField`` - a new ``TypeAdapter`` (a pydantic core schema) - for every parameter and response
    model again, from the same annotation and ``FieldInfo``. Here ``ModelField.__post_init__`` looks the
    adapter up by everything it is built from (annotation, metadata, ``FieldInfo`` attributes, config;
    see :func:`_key`; a field with a value that cannot be keyed is built as before), and
    ``get_typed_signature`` / ``get_typed_return_annotation`` by the endpoint (a function's signature
    does not change). Guarded (:data:`GUARD`); returns False and changes nothing when the guard is off or
    it is applied already. tests/test_preload.py checks that every route of Airflow's API server
    validates and serialises with the same schemas as without the patch.
    """
    if not GUARD.allows():
        return False
    import fastapi.dependencies.utils as deps
    import fastapi.routing as routing
    from fastapi._compat import v2

    adapters: dict = {}

    def make_post_init(original):
        def __post_init__(self):
            try:
                d = v2.asdict(self.field_info)
                key = (
                    _key(d["annotation"]),
                    _key(tuple(d["metadata"])),
                    _key(d["attributes"]),
                    _key(self.config),
                )
            except _Uncacheable:
                return original(self)
            adapter = adapters.get(key)
            if adapter is None:
                original(self)
                adapters[key] = self._type_adapter
            else:
                self._type_adapter = adapter

        return __post_init__

    def memo(original):
        seen: dict = {}

        def by_call(call):
            try:
                return seen[call]
            except KeyError:
                result = seen[call] = original(call)
                return result
            except TypeError:  # an unhashable callable
                return original(call)

        return by_call

    if not wrap(v2.ModelField, "__post_init__", make_post_init):
        return False
    wrap(deps, "get_typed_signature", memo)
    wrap(routing, "get_typed_return_annotation", memo)  # APIRoute calls it by this name
    return GUARD.applied()

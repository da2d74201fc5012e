"""Where in a pool's data root a tenant may go.

Every tenant of a node shares each pool's data root, so a tenant's token reaches only
``/home/TENANT`` (for everything) and ``/datasets`` (to read any dataset, and to put or
remove under ``/datasets/NAME/`` or at ``/datasets/NAME@VERSION`` for a dataset it owns
or a name nobody owns yet); an admin reaches the whole root. The node checks this where
a path comes in from a user: a ticket request, a job's pool inputs and outputs, and a
copy recorded for a dataset (which would freeze the path). The data server then holds each
ticket to its one path.
"""

from __future__ import annotations

from sqlalchemy import Connection

from computenet.model import Direction
from computenet.model.dataset import DatasetRef, PoolRef, parse_data_uri, split_input
from computenet.model.job import JobSpec
from computenet.node.errors import Forbidden
from computenet.node.store import datasets as dataset_store
from computenet.transfer.paths import PathError, normalise, within


def home(tenant: str) -> str:
    return f"/home/{tenant}"


def check(
    conn: Connection,
    tenant: str,
    pool: str,
    path: str,
    direction: Direction,
    field: str,
    fresh: bool = True,
) -> None:
    """Refuses (403, naming ``field``) a tenant's path outside its reach; ``path`` is
    normalised (no leading slash). Without ``fresh``, writing under ``/datasets/NAME``
    needs a name the tenant owns already: a job's output lands long after the check."""
    parts = path.split("/") if path else []
    if parts[:2] == ["home", tenant]:
        return
    if direction is Direction.get and (parts[:1] == ["datasets"] or _in_a_copy(conn, pool, path)):
        return
    if parts[:1] == ["datasets"]:
        name = parts[1].partition("@")[0] if len(parts) > 1 else ""  # staging fetches to NAME@V
        if name and (len(parts) >= 3 or name != parts[1]):
            owner = dataset_store.owner(conn, name)
            if owner == tenant or (owner is None and fresh):
                return
            if owner is None:
                why = f"a job's output goes to a new dataset as cnet://dataset/{name}"
                raise Forbidden(f"dataset {name!r} has no version yet: {why}", field=field)
            raise Forbidden(f"dataset {name!r} belongs to tenant {owner}", field=field)
    reach = f"its home {home(tenant)}, and the datasets to read"
    raise Forbidden(
        f"/{path} is outside what tenant {tenant} may reach in a pool: {reach}", field=field
    )


def _in_a_copy(conn: Connection, pool: str, path: str) -> bool:
    """Every tenant may read every dataset, wherever in a pool its copy lies."""
    return any(within(where, path) for _, _, where in dataset_store.held_at(conn, pool, path))


def check_job(conn: Connection, spec: JobSpec, tenant: str, field: str = "") -> None:
    """A job's pool inputs are read and its pool outputs written with its tenant's reach."""
    for i, item in enumerate(spec.inputs):
        _check_uri(conn, tenant, item.uri, Direction.get, f"{field}inputs.{i}.uri")
    for i, out in enumerate(spec.outputs):
        _check_uri(conn, tenant, out.uri, Direction.put, f"{field}outputs.{i}.uri")


def _check_uri(conn: Connection, tenant: str, uri: str, way: Direction, field: str) -> None:
    ref: DatasetRef | PoolRef = parse_data_uri(split_input(uri)[0])
    if isinstance(ref, PoolRef):
        try:
            path = normalise(ref.path)
        except PathError:
            path = ref.path.strip("/")  # staging refuses it, naming it
        check(conn, tenant, ref.pool, path, way, field, fresh=False)

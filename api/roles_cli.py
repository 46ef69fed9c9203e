"""`eventkeep db roles`: the least-privilege PostgreSQL roles and their grants
(eventstore/roles.py), made by the schema's owner.

Reads the owner's URL (EVENTKEEP_POSTGRES_OWNER_URL, else EVENTKEEP_POSTGRES_URL) and each
role's URL (EVENTKEEP_POSTGRES_WRITER_URL, _RELAY_URL, _PROJECTOR_URL, _QUERY_URL,
_AUDITOR_URL): every role whose URL is set is created when missing (user and password from its
URL) and granted exactly its privileges. Migrates first, as the owner (the grants name the
tables). Idempotent: run it at every deployment, after `eventkeep db migrate`.
"""

from __future__ import annotations

import typer
from rich.console import Console

from eventkeep.settings import Settings

out = Console()


def roles() -> None:
    """Create the least-privilege roles whose URLs are set and grant them their privileges.

    Runs as the owner (EVENTKEEP_POSTGRES_OWNER_URL, else EVENTKEEP_POSTGRES_URL): a role that
    is not a superuser, with CREATEROLE when the roles do not exist yet. Idempotent.
    """
    from eventkeep.bootstrap import provision_roles, role_urls

    settings = Settings()
    if settings.postgres_url is None:
        out.print("eventkeep db roles: the embedded mode has no database roles", highlight=False)
        raise typer.Exit(2)
    if not role_urls(settings):
        out.print(
            "eventkeep db roles: set the roles' URLs (EVENTKEEP_POSTGRES_WRITER_URL, "
            "_RELAY_URL, _PROJECTOR_URL, _QUERY_URL, _AUDITOR_URL)",
            highlight=False,
        )
        raise typer.Exit(2)
    for line in provision_roles(settings):
        out.print(line, highlight=False)

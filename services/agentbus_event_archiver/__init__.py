"""The event-archiver service: the durable, queryable record of every agent event."""

from agentbus_event_archiver.errors import ArchiveError
from agentbus_event_archiver.service import EventArchiver
from agentbus_event_archiver.store import EVENTS_TABLE, EventStore

__all__ = ["EVENTS_TABLE", "ArchiveError", "EventArchiver", "EventStore"]

"""The summarize-worker: the `summarize` skill and its summarizer backends.

The worker runtime (pull consumer, slots, heartbeats, retries, DLQ) is the core's
`agentbus.worker.TaskWorker`; this package registers the skill under the
`agentbus.skills` entry point `summarize`.
"""

from agentbus_summarize_worker.errors import SummarizerError, SummarizeWorkerError
from agentbus_summarize_worker.skill import SummarizeSkill

__all__ = ["SummarizeSkill", "SummarizeWorkerError", "SummarizerError"]

"""Running a service: the service lifecycle, the generic task worker and its skill
protocol, loading skills, the request/reply endpoint. Imports the layers below."""

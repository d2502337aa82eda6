"""The project's pipelines, one package each (registered by folder name in ``pipeline_registry``)."""

CALENDAR_PARAMS: dict[str, str] = {
    "country": "params:calendar.country",
    "month_end_business_days": "params:calendar.month_end_business_days",
    "quarter_end_business_days": "params:calendar.quarter_end_business_days",
}
"""Node inputs for the shared business calendar (``conf/base/parameters.yml``), keyed by argument name."""

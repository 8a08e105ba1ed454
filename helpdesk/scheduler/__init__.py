"""Work done on a timetable: polls without IDLE, the outbox, the SLA sweep."""

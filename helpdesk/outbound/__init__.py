"""Outgoing mail: handing messages to the SMTP relay."""

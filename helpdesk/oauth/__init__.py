"""OAuth 2.0 access tokens for mailboxes and the SMTP relay, and the SASL mechanisms that carry them."""

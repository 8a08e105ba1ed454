"""What to do about an error from Microsoft's identity platform (AADSTS codes) or from Graph.

Pure lookups for ``helpdesk mailbox test`` and the daemon's log: each answer names the likely cause
and the place to fix it, in the operator's terms (Microsoft Entra admin center, Exchange Online).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

AADSTS = re.compile(r"AADSTS(\d+)")

IDENTITY_ADVICE: dict[int, str] = {
    7000215: "the client secret is wrong: put the secret's Value into the environment variable (it is shown once, "
             "when the secret is created), not its Secret ID",
    7000222: "the client secret has expired: create a new one under App registrations > Certificates & secrets "
             "and update the environment variable",
    700016: "there is no application with this client_id in the tenant: check client_id and tenant (the app must "
            "be registered in, or consented to by, the tenant that holds the mailbox)",
    90002: "the tenant does not exist: set tenant to the Directory (tenant) ID or a verified domain of the tenant",
    700027: "the certificate was refused: upload the certificate (its public part, .crt/.cer/.pem) to the app "
            "registration under Certificates & secrets, and make sure the private key here belongs to it",
    700024: "the signed client assertion is outside its validity period: check this server's clock (NTP)",
    65001: "an administrator has not granted consent: API permissions > Grant admin consent",
    70011: "the scope is invalid: with client credentials it must be a resource followed by /.default",
    1002012: "the scope is invalid: with client credentials it must be a resource followed by /.default",
    500011: "the API is not available in the tenant: check the scope (Graph: https://graph.microsoft.com/.default, "
            "IMAP/POP/SMTP/EWS: https://outlook.office365.com/.default)",
    7000112: "the application is disabled in the tenant: enable it under Enterprise applications",
    53003: "a Conditional Access policy blocked the sign-in: exclude the app or allow this server's address",
}

GRAPH_ADVICE: dict[tuple[int, str], str] = {
    (403, "ErrorAccessDenied"): "the app may not use this mailbox: with RBAC for Applications, the mailbox must be in "
                                "the management scope of the app's 'Application Mail.ReadWrite' (and 'Application "
                                "Mail.Send') role assignments (Test-ServicePrincipalAuthorization shows InScope); "
                                "without RBAC, the app needs those application permissions with admin consent; "
                                "changes can take up to 2 hours to apply",
    (403, "Authorization_RequestDenied"): "the app lacks the required application permission or admin consent",
    (403, "ErrorSendAsDenied"): "the app may not send as this mailbox: grant Mail.Send and include the mailbox in "
                                "the app's access scope",
    (404, "ErrorInvalidUser"): "there is no mailbox with this address: check user (the mailbox's SMTP address)",
    (404, "ResourceNotFound"): "there is no mailbox with this address: check user (the mailbox's SMTP address)",
    (404, "MailboxNotEnabledForRESTAPI"): "the mailbox is not in Exchange Online (on-premises or without an "
                                          "Exchange licence): use an ews mailbox for Exchange Server",
    (404, "ErrorFolderNotFound"): "the folder does not exist: check folder",
    (401, "InvalidAuthenticationToken"): "Graph refused the token: the scope must be "
                                         "https://graph.microsoft.com/.default and the token current",
    (429, "ApplicationThrottled"): "Graph is throttling the app for this mailbox: it recovers by itself; "
                                   "check no other program uses the same app and mailbox heavily",
}


def identity_codes(text: str, codes: Iterable[int] = ()) -> list[int]:
    """The AADSTS numbers given as ``error_codes`` or found in an error description."""
    found = list(codes)
    found.extend(int(m) for m in AADSTS.findall(text) if int(m) not in found)
    return found


def identity_advice(text: str, codes: Iterable[int] = ()) -> str | None:
    for code in identity_codes(text, codes):
        if code in IDENTITY_ADVICE:
            return f"AADSTS{code}: {IDENTITY_ADVICE[code]}"
    return None


def graph_advice(status: int, code: str) -> str | None:
    return GRAPH_ADVICE.get((status, code))

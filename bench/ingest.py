"""End-to-end ingestion benchmark: a private Dovecot, N realistic support mails, ``helpdesk run --once``.

    python -m bench.ingest [-n 5000] [--runs 3] [--database-url URL] [--seed 7]
    python -m bench.ingest --profile [-n 2000]

The mails are generated with a seeded RNG (new enquiries, replies threaded by In-Reply-To or by
References only, quoted history, auto-replies, HTML-only and multipart/alternative mails, attachments,
German and French text with RFC 2047 subjects) and the ground truth is kept: the conversation every
mail belongs to and whether it is an auto-reply. Each run loads the mails into a fresh IMAP user,
writes a channels.yaml (one IMAP mailbox, ``after_import: move``, ``batch_size: 200``, listener off)
and times ``helpdesk -c channels.yaml run --once`` as a subprocess against a fresh database; then the
database is read back to check threading and auto-reply handling.

``--profile`` runs the same ingestion in-process instead: once with cheap wall-clock timers around
the pipeline's stages (an exclusive-time breakdown) and once under cProfile (top 25 cumulative).

Run by hand; pytest never collects this package (it is outside ``testpaths``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
HELPDESK_BIN = ROOT / ".venv" / "bin" / "helpdesk"
GNU_TIME = Path("/usr/bin/time")
SUPPORT = "support@example.test"
TARGET_MSG_S = 1000.0

# ============================================================================================
# Mail corpus
# ============================================================================================

ORGS: list[tuple[str, str, str]] = [
    # (slug, name, locale)
    ("acme", "ACME Corp", "en"), ("globex", "Globex", "en"), ("initech", "Initech", "en"),
    ("umbrella", "Umbrella plc", "en"), ("hooli", "Hooli", "en"), ("stark", "Stark Industries", "en"),
    ("wayne", "Wayne Enterprises", "en"), ("cyberdyne", "Cyberdyne Systems", "en"),
    ("tyrell", "Tyrell Corporation", "en"), ("soylent", "Soylent Ltd", "en"), ("oscorp", "Oscorp", "en"),
    ("vandelay", "Vandelay Industries", "en"), ("wonka", "Wonka Ltd", "en"),
    ("mueller-bau", "Müller Bau GmbH", "de"), ("schmidt-logistik", "Schmidt Logistik AG", "de"),
    ("bergmann", "Bergmann & Söhne KG", "de"), ("hofmann-med", "Hofmann Medizintechnik", "de"),
    ("kraus-energie", "Kraus Energie", "de"), ("weber-druck", "Weber Druck GmbH", "de"),
    ("stadtwerke-nordheim", "Stadtwerke Nordheim", "de"), ("fischer-stb", "Fischer Steuerberatung", "de"),
    ("becker-immo", "Becker Immobilien", "de"), ("dupont", "Dupont & Associés", "fr"),
    ("laurent-transports", "Laurent Transports", "fr"), ("moreau-conseil", "Moreau Conseil", "fr"),
    ("lefevre", "Lefèvre Industrie", "fr"), ("bernard-avocats", "Bernard Avocats", "fr"),
    ("girard-sante", "Girard Santé", "fr"), ("rousseau-btp", "Rousseau Bâtiment", "fr"),
    ("mercier-finance", "Mercier Finance", "fr"),
]

FIRST = {
    "en": ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isla", "Jack", "Kate", "Liam",
           "Mia", "Noah", "Olivia", "Peter", "Quinn", "Ruby", "Sam", "Tom"],
    "de": ["Jürgen", "Anna", "Björn", "Claudia", "Dieter", "Elke", "Günther", "Heike", "Jörg", "Katrin", "Lars",
           "Monika", "Sören", "Ute", "Uwe", "Sabine", "Thomas", "Birgit"],
    "fr": ["Amélie", "Benoît", "Céline", "Éric", "François", "Hélène", "Jérôme", "Léa", "Loïc", "Maëlle",
           "Noël", "Océane", "Stéphane", "Thérèse", "Zoé", "Mathieu"],
}
LAST = {
    "en": ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
           "Thompson", "Evans", "Walker", "White", "Roberts", "Green"],
    "de": ["Müller", "Schmidt", "Schneider", "Fischer", "Weiß", "Becker", "Schäfer", "Koch", "Bauer", "Richter",
           "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Krüger"],
    "fr": ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Lefèvre", "Moreau",
           "Girard", "André", "Mercier", "Boyer", "Rousseau", "Lambert"],
}

ISSUES = {
    "en": [
        ("Printer on floor {floor} does not print",
         "the printer on floor {floor} stopped printing this morning. The display shows error {code} and "
         "the queue is stuck with {n} jobs. We already switched it off and on again."),
        ("VPN connection drops every {n} minutes",
         "since yesterday the VPN connection drops every {n} minutes, for everyone working from home. "
         "The client log says 'peer not responding' right before it happens."),
        ("Cannot log in to {app}",
         "I cannot log in to {app} any more. It says my account is locked, but I did not enter a wrong "
         "password. Could you please unlock it? My user name is {user}."),
        ("URGENT: server {host} is down",
         "our file server {host} is not reachable since {hour}:{minute}. Nobody in the office can open "
         "their documents. This is urgent, please call me back."),
        ("New laptop for {person}",
         "{person} starts on Monday in accounting. Please prepare a laptop with the usual software, an "
         "e-mail account and access to the shared drive \\\\{host}\\finance."),
        ("Outlook keeps asking for the password",
         "Outlook keeps asking for my password every few minutes, even though I typed it correctly. "
         "Webmail works fine. I am on Windows 11 with the latest updates."),
        ("Question about invoice {invoice}",
         "we received invoice {invoice} for {n} hours of on-site support. Could you send us the list of "
         "the visits and what was done? Our accounting needs it before the end of the month."),
        ("Access to shared mailbox {mailbox}",
         "please give me full access to the shared mailbox {mailbox}@{domain}. My manager approved it."),
        ("Backup job failed ({n} errors)",
         "the nightly backup job reported {n} errors again. The report says 'VSS snapshot timed out' for "
         "the database volume on {host}."),
        ("Phone on desk {floor}{n} has no dial tone",
         "the desk phone at place {floor}{n} has no dial tone since the move. The cable is plugged in."),
    ],
    "de": [
        ("Drucker im {floor}. OG druckt nicht",
         "der Drucker im {floor}. Obergeschoss druckt seit heute früh nicht mehr. Im Display steht Fehler "
         "{code}, in der Warteschlange hängen {n} Aufträge. Aus- und Einschalten hat nicht geholfen."),
        ("VPN-Verbindung bricht ständig ab",
         "seit gestern bricht die VPN-Verbindung alle {n} Minuten ab, bei allen Kollegen im Homeoffice. "
         "Können Sie sich das bitte möglichst bald ansehen?"),
        ("Zugang zu {app} gesperrt",
         "mein Zugang zu {app} ist gesperrt, obwohl ich kein falsches Passwort eingegeben habe. Mein "
         "Benutzername ist {user}. Bitte entsperren Sie das Konto."),
        ("Dringend: Server {host} nicht erreichbar",
         "unser Dateiserver {host} ist seit {hour}:{minute} Uhr nicht erreichbar. Niemand im Büro kann "
         "arbeiten. Das ist dringend, bitte rufen Sie mich zurück."),
        ("Neuer Mitarbeiter – Konto für {person} anlegen",
         "ab Montag fängt {person} in der Buchhaltung an. Bitte richten Sie einen Laptop, ein Postfach "
         "und den Zugriff auf das Laufwerk \\\\{host}\\Buchhaltung ein."),
        ("Frage zur Rechnung Nr. {invoice}",
         "wir haben die Rechnung Nr. {invoice} über {n} Stunden Vor-Ort-Einsatz erhalten. Könnten Sie uns "
         "bitte eine Aufstellung der Einsätze schicken? Die Buchhaltung benötigt sie bis Monatsende."),
        ("Größe des Postfachs überschritten",
         "Outlook meldet, dass mein Postfach voll ist ({n} MB). Können Sie das Kontingent erhöhen oder "
         "alte Mails archivieren?"),
        ("Sicherung fehlgeschlagen",
         "die nächtliche Sicherung meldet wieder {n} Fehler: 'VSS-Snapshot Zeitüberschreitung' auf {host}."),
    ],
    "fr": [
        ("L'imprimante du {floor}e étage ne fonctionne plus",
         "l'imprimante du {floor}e étage n'imprime plus depuis ce matin. L'écran affiche l'erreur {code} "
         "et {n} travaux sont bloqués dans la file d'attente."),
        ("Problème de connexion VPN",
         "depuis hier, la connexion VPN se coupe toutes les {n} minutes pour tous les collègues en "
         "télétravail. Pourriez-vous regarder cela rapidement ?"),
        ("Accès refusé à {app}",
         "je n'arrive plus à me connecter à {app} : mon compte est verrouillé alors que je n'ai pas fait "
         "d'erreur de mot de passe. Mon identifiant est {user}."),
        ("Urgent : le serveur {host} ne répond plus",
         "notre serveur de fichiers {host} est inaccessible depuis {hour}h{minute}. Personne au bureau ne "
         "peut travailler. C'est urgent, merci de me rappeler."),
        ("Création de compte pour {person}",
         "{person} arrive lundi à la comptabilité. Merci de préparer un portable, une adresse e-mail et "
         "l'accès au partage \\\\{host}\\compta."),
        ("Question sur la facture n° {invoice}",
         "nous avons reçu la facture n° {invoice} pour {n} heures d'intervention. Pourriez-vous nous "
         "envoyer le détail des interventions ? Notre comptabilité en a besoin avant la fin du mois."),
        ("Écran noir au démarrage",
         "mon poste affiche un écran noir au démarrage depuis la mise à jour d'hier soir ({code})."),
    ],
}

GREETING = {
    "en": ["Hello,", "Hi team,", "Dear support team,", "Good morning,"],
    "de": ["Hallo,", "Guten Tag,", "Liebes Support-Team,", "Sehr geehrte Damen und Herren,"],
    "fr": ["Bonjour,", "Madame, Monsieur,", "Bonjour à toute l'équipe,"],
}
CLOSING = {
    "en": ["Best regards,", "Kind regards,", "Thanks,", "Many thanks in advance,"],
    "de": ["Viele Grüße", "Mit freundlichen Grüßen", "Danke und Gruß", "Beste Grüße"],
    "fr": ["Cordialement,", "Bien à vous,", "Merci d'avance,", "Bonne journée,"],
}
REPLY_TEXT = {
    "en": ["Thanks for the quick answer. Unfortunately the problem is still there after the restart.",
           "Any update on this? We still cannot work properly.",
           "Here is the additional information you asked for: the serial number is {code}.",
           "It works again, thank you! You can close the ticket.",
           "I tried what you suggested, but now I get error {code} instead."],
    "de": ["Danke für die schnelle Antwort. Leider besteht das Problem nach dem Neustart weiterhin.",
           "Gibt es schon etwas Neues? Wir können immer noch nicht richtig arbeiten.",
           "Hier die gewünschten Angaben: die Seriennummer lautet {code}.",
           "Es funktioniert wieder, vielen Dank! Das Ticket kann geschlossen werden.",
           "Ich habe Ihren Vorschlag ausprobiert, jetzt kommt aber Fehler {code}."],
    "fr": ["Merci pour la réponse rapide. Malheureusement le problème persiste après le redémarrage.",
           "Avez-vous des nouvelles ? Nous ne pouvons toujours pas travailler correctement.",
           "Voici les informations demandées : le numéro de série est {code}.",
           "Cela fonctionne à nouveau, merci beaucoup ! Vous pouvez clore la demande.",
           "J'ai essayé votre solution, mais j'ai maintenant l'erreur {code}."],
}
AGENT_TEXT = {
    "en": "Dear {first},\n\nthank you for your message. Could you please restart the device and tell us the "
          "serial number on the label at the back?\n\nBest regards\nYour IT support",
    "de": "Hallo {first},\n\nvielen Dank für Ihre Nachricht. Bitte starten Sie das Gerät neu und nennen Sie "
          "uns die Seriennummer auf dem Aufkleber.\n\nViele Grüße\nIhr IT-Support",
    "fr": "Bonjour {first},\n\nmerci pour votre message. Pourriez-vous redémarrer l'appareil et nous indiquer "
          "le numéro de série sur l'étiquette ?\n\nCordialement\nVotre support informatique",
}
REPLY_PREFIX = {"en": ["Re: ", "RE: ", "Re: Re: "], "de": ["AW: ", "Re: ", "AW: AW: "], "fr": ["RE : ", "Re: "]}
APPS = ["SAP", "Salesforce", "DATEV", "Teams", "SharePoint", "the CRM", "Jira", "the ERP", "Citrix"]
ATTACHMENT_KINDS = [
    ("scan_{n}.pdf", "application/pdf", b"%PDF-1.4\n"),
    ("screenshot_{n}.png", "image/png", b"\x89PNG\r\n\x1a\n"),
    ("Fehlerprotokoll_{n}.txt", "text/plain", b""),
    ("inventory_{n}.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", b"PK\x03\x04"),
    ("photo_{n}.jpg", "image/jpeg", b"\xff\xd8\xff\xe0"),
]


@dataclass
class Contact:
    first: str
    last: str
    address: str
    org: int
    locale: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class Thread:
    id: int
    contact: Contact
    subject: str
    locale: str
    known_ids: list[str] = field(default_factory=list)  # Message-IDs of its mails the helpdesk received
    last_text: str = ""
    last_from: Contact | None = None
    last_date: datetime | None = None


@dataclass(frozen=True)
class Truth:
    """Ground truth of one generated mail."""

    message_id: str
    kind: str  # new | reply_irt | reply_refs | reply_irt_unknown | auto
    thread: int | None  # the conversation; None for an auto-reply that references nothing we know
    auto: bool
    first_of_thread: bool


@dataclass
class Corpus:
    mails: list[bytes]
    truth: list[Truth]
    threads: int
    orgs: list[dict[str, Any]]

    @property
    def size_bytes(self) -> int:
        return sum(len(m) for m in self.mails)


class Generator:
    """Builds the corpus; every random choice comes from one seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
        self.seq = 0
        self.contacts: list[Contact] = []
        self.by_org: dict[int, list[Contact]] = defaultdict(list)
        self.logo = self.rng.randbytes(14_000)  # the same signature image in many HTML mails (blob dedupe)
        for index, (slug, _name, locale) in enumerate(ORGS):
            domain = f"{slug}.example"
            for _ in range(self.rng.randint(6, 14)):
                first, last = self.rng.choice(FIRST[locale]), self.rng.choice(LAST[locale])
                local = f"{_ascii(first)}.{_ascii(last)}".lower()
                host = f"mail.{domain}" if self.rng.random() < 0.08 else domain  # parent-domain lookups
                contact = Contact(first, last, f"{local}@{host}", index, locale)
                if any(c.address == contact.address for c in self.by_org[index]):
                    continue
                self.contacts.append(contact)
                self.by_org[index].append(contact)

    # --- helpers ---------------------------------------------------------------------------------

    def _mid(self, contact: Contact) -> str:
        self.seq += 1
        domain = contact.address.rpartition("@")[2]
        return f"{self.rng.getrandbits(64):016x}.{self.seq}@{domain}"

    def _unknown_mid(self) -> str:
        """The Message-ID of a mail the helpdesk sent (not in this benchmark's database)."""
        return f"{self.rng.getrandbits(64):016x}@helpdesk.example.test"

    def _tick(self) -> datetime:
        self.now += timedelta(seconds=self.rng.randint(5, 240))
        return self.now

    def _fill(self, template: str, contact: Contact) -> str:
        rng = self.rng
        colleague = rng.choice(self.by_org[contact.org])
        return template.format(
            floor=rng.randint(1, 6), code=f"E{rng.randint(100, 999)}", n=rng.randint(2, 40),
            app=rng.choice(APPS), host=f"srv-{rng.choice(['fs', 'dc', 'db', 'app'])}{rng.randint(1, 9):02d}",
            hour=rng.randint(7, 17), minute=f"{rng.randint(0, 59):02d}", person=colleague.name,
            invoice=f"2026-{rng.randint(1000, 9999)}", user=contact.address.split("@")[0],
            mailbox=rng.choice(["info", "einkauf", "accounts", "contact"]), domain=contact.address.split("@")[1],
        )

    def _signature(self, contact: Contact) -> str:
        org = ORGS[contact.org][1]
        phone = f"+{self.rng.choice(['44 20', '49 89', '33 1'])} {self.rng.randint(1000000, 9999999)}"
        sig = f"{contact.name}\n{org}\nTel. {phone}"
        return ("-- \n" + sig) if self.rng.random() < 0.3 else sig

    def _body(self, contact: Contact, core: str) -> str:
        locale = contact.locale
        return (
            f"{self.rng.choice(GREETING[locale])}\n\n{core}\n\n{self.rng.choice(CLOSING[locale])}\n"
            f"{self._signature(contact)}\n"
        )

    def _attachments(self, count: int, low: int = 10_000, high: int = 200_000) -> list[tuple[str, str, bytes]]:
        out = []
        for _ in range(count):
            name, ctype, magic = self.rng.choice(ATTACHMENT_KINDS)
            size = self.rng.randint(low, high)
            if ctype == "text/plain":
                line = "2026-03-02 08:00:00 ERROR svc[{}]: connection reset by peer\n"
                payload = "".join(line.format(i) for i in range(size // 56)).encode()
            else:
                payload = magic + self.rng.randbytes(size)
            out.append((name.format(n=self.rng.randint(1, 999)), ctype, payload))
        return out

    def _html(self, text: str, quoted_html: str = "", heavy: bool = False) -> str:
        paragraphs = "".join(
            f'<p class="MsoNormal" style="margin:0 0 8pt 0">{_escape(p).replace(chr(10), "<br>")}</p>'
            for p in text.strip().split("\n\n")
        )
        extra = ""
        if heavy:
            rows = "".join(
                f'<tr><td style="border:1px solid #ccc;padding:4px;font-family:Calibri">{k}</td>'
                f'<td style="border:1px solid #ccc;padding:4px;font-family:Calibri">{v}</td></tr>'
                for k, v in (
                    (f"Host {i}", f"srv-{self.rng.randint(1, 99):02d} / 10.{self.rng.randint(0, 255)}.{i}.1")
                    for i in range(self.rng.randint(40, 250))
                )
            )
            extra = (
                '<table style="border-collapse:collapse;width:100%">' + rows + "</table>"
                '<p><img src="cid:logo001@example" width="120" height="40" alt="logo"></p>'
            )
        head = (
            '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
            "<style>p.MsoNormal{margin:0;font-size:11pt;font-family:Calibri,sans-serif}</style></head>"
        )
        return f'{head}<body lang="en" style="word-wrap:break-word"><div class="WordSection1">' \
               f"{paragraphs}{extra}{quoted_html}</div></body></html>"

    def _quote(self, thread: Thread, style: str) -> tuple[str, str]:
        """Quoted history (plain, HTML) for a reply: the helpdesk's answer quoting the last mail."""
        prev = thread.last_from or thread.contact
        when = thread.last_date or self.now
        agent = AGENT_TEXT[thread.locale].format(first=prev.first)
        earlier = "\n".join("> " + line if line else ">" for line in thread.last_text.splitlines())
        history = f"{agent}\n\n{earlier}\n"
        date = when.strftime("%d.%m.%Y %H:%M") if thread.locale != "en" else format_datetime(when)
        if style == "outlook":
            labels = {
                "en": ("-----Original Message-----", "From", "Sent", "To", "Subject"),
                "de": ("-----Ursprüngliche Nachricht-----", "Von", "Gesendet", "An", "Betreff"),
                "fr": ("-----Message d'origine-----", "De", "Envoyé", "À", "Objet"),
            }[thread.locale]
            head = (f"{labels[0]}\n{labels[1]}: IT Support <{SUPPORT}>\n{labels[2]}: {date}\n"
                    f"{labels[3]}: {prev.name} <{prev.address}>\n{labels[4]}: {thread.subject}\n")
            plain = f"\n\n{head}\n{history}"
            html = ('<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0 0 0">'
                    f"<p><b>{labels[1]}:</b> IT Support &lt;{SUPPORT}&gt;<br><b>{labels[2]}:</b> {date}</p></div>"
                    f"<p>{_escape(history).replace(chr(10), '<br>')}</p>")
            return plain, html
        attribution = {
            "en": f"On {date}, IT Support <{SUPPORT}> wrote:",
            "de": f"Am {date} schrieb IT Support <{SUPPORT}>:",
            "fr": f"Le {date}, IT Support <{SUPPORT}> a écrit :",
        }[thread.locale]
        quoted = "\n".join("> " + line if line else ">" for line in history.splitlines())
        plain = f"\n\n{attribution}\n{quoted}\n"
        html = (f"<div>{_escape(attribution)}<br></div><blockquote type=\"cite\" style=\"margin:0 0 0 .8ex;"
                f'border-left:1px #ccc solid;padding-left:1ex">{_escape(history).replace(chr(10), "<br>")}'
                "</blockquote>")
        return plain, html

    def _message(
        self,
        *,
        contact: Contact,
        subject: str,
        body: str,
        message_id: str,
        fmt: str,
        quoted: tuple[str, str] = ("", ""),
        in_reply_to: str | None = None,
        references: list[str] | None = None,
        headers: dict[str, str] | None = None,
        attachments: list[tuple[str, str, bytes]] | None = None,
        heavy: bool = False,
    ) -> bytes:
        rng = self.rng
        msg = EmailMessage()
        msg["From"] = f"{contact.name} <{contact.address}>" if rng.random() < 0.9 else contact.address
        msg["To"] = rng.choice([SUPPORT, f"IT Support <{SUPPORT}>", f'"Support" <{SUPPORT}>'])
        if rng.random() < 0.15:
            others = [c for c in self.by_org[contact.org] if c is not contact]
            if others:
                msg["Cc"] = ", ".join(f"{c.name} <{c.address}>" for c in rng.sample(others, min(2, len(others))))
        msg["Subject"] = subject
        msg["Date"] = format_datetime(self._tick())
        msg["Message-ID"] = f"<{message_id}>"
        if in_reply_to:
            msg["In-Reply-To"] = f"<{in_reply_to}>"
        if references:
            msg["References"] = " ".join(f"<{r}>" for r in references)
        msg["MIME-Version"] = "1.0"
        msg["X-Mailer"] = rng.choice(["Microsoft Outlook 16.0", "Apple Mail (2.3774)", "Thunderbird 128.3"])
        for name, value in (headers or {}).items():
            msg[name] = value
        plain = body + quoted[0]
        latin1 = contact.locale != "en" and rng.random() < 0.3
        if fmt == "html":
            msg.set_content(self._html(body, quoted[1], heavy), subtype="html")
        elif latin1:
            charset = "iso-8859-1" if _encodable(plain, "latin-1") else "windows-1252"
            msg.set_content(plain, charset=charset, cte="quoted-printable")
        else:
            cte = rng.choice([None, None, "quoted-printable", "base64"]) if contact.locale != "en" else None
            if cte:
                msg.set_content(plain, cte=cte)
            else:
                msg.set_content(plain)
        if fmt == "alternative":
            msg.add_alternative(self._html(body, quoted[1], heavy), subtype="html")
        if heavy:
            msg.add_attachment(self.logo, maintype="image", subtype="png", filename="logo.png",
                               disposition="inline", cid="<logo001@example>")
        for filename, ctype, payload in attachments or ():
            maintype, subtype = ctype.split("/", 1)
            if maintype == "text":
                msg.add_attachment(payload.decode(), subtype=subtype, filename=filename)
            else:
                msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
        return msg.as_bytes()

    def _format(self) -> str:
        roll = self.rng.random()
        return "plain" if roll < 0.6 else "alternative" if roll < 0.9 else "html"

    # --- kinds of mail -----------------------------------------------------------------------------

    def new_enquiry(self, threads: list[Thread], heavy: bool = False) -> tuple[bytes, Truth]:
        rng = self.rng
        contact = rng.choice(self.contacts)
        subject_t, body_t = rng.choice(ISSUES[contact.locale])
        subject = self._fill(subject_t, contact)
        core = self._fill(body_t, contact)
        body = self._body(contact, core)
        mid = self._mid(contact)
        attachments = self._attachments(1 if rng.random() < 0.7 else 2) if heavy else (
            self._attachments(1) if rng.random() < 0.05 else [])
        fmt = rng.choice(["alternative", "html"]) if heavy else self._format()
        raw = self._message(contact=contact, subject=subject, body=body, message_id=mid, fmt=fmt,
                            attachments=attachments, heavy=heavy)
        thread = Thread(id=len(threads), contact=contact, subject=subject, locale=contact.locale,
                        known_ids=[mid], last_text=body, last_from=contact, last_date=self.now)
        threads.append(thread)
        return raw, Truth(mid, "new", thread.id, auto=False, first_of_thread=True)

    def _pick_thread(self, threads: list[Thread]) -> Thread:
        recent = threads[-400:]
        return self.rng.choice(recent)

    def reply(self, threads: list[Thread], heavy: bool = False) -> tuple[bytes, Truth]:
        rng = self.rng
        thread = self._pick_thread(threads)
        colleagues = self.by_org[thread.contact.org]
        author = thread.contact if rng.random() < 0.8 or len(colleagues) < 2 else rng.choice(colleagues)
        prefix = rng.choice(REPLY_PREFIX[thread.locale])
        subject = prefix + thread.subject
        core = self._fill(rng.choice(REPLY_TEXT[thread.locale]), author)
        body = self._body(author, core)
        quoted = self._quote(thread, rng.choice(["gmail", "gmail", "outlook"]))
        mid = self._mid(author)
        agent_id = self._unknown_mid()
        roll = rng.random()
        refs = list(thread.known_ids[-8:])
        if heavy or roll < 0.5:
            kind, irt = "reply_irt", refs[-1]
        elif roll < 0.8:
            # References only; in half of them the newest id is the helpdesk's (unknown) answer.
            kind, irt = "reply_refs", None
            if rng.random() < 0.5:
                refs.append(agent_id)
        else:
            # A reply to the helpdesk's answer: In-Reply-To unknown, References hold a known id.
            kind, irt = "reply_irt_unknown", agent_id
            refs.append(agent_id)
        attachments = self._attachments(1) if heavy or rng.random() < 0.04 else []
        fmt = rng.choice(["alternative", "html"]) if heavy else self._format()
        raw = self._message(contact=author, subject=subject, body=body, message_id=mid, fmt=fmt, quoted=quoted,
                            in_reply_to=irt, references=refs, attachments=attachments, heavy=heavy)
        thread.known_ids.append(mid)
        thread.last_text, thread.last_from, thread.last_date = body, author, self.now
        return raw, Truth(mid, kind, thread.id, auto=False, first_of_thread=False)

    def auto_reply(self, threads: list[Thread]) -> tuple[bytes, Truth]:
        rng = self.rng
        threaded = rng.random() < 0.6
        thread = self._pick_thread(threads) if threaded else None
        contact = thread.contact if thread else rng.choice(self.contacts)
        locale = contact.locale
        original = thread.subject if thread else self._fill(rng.choice(ISSUES[locale])[0], contact)
        variant = rng.randrange(6)
        headers: dict[str, str] = {}
        if variant == 0:
            subject = {"en": "Automatic reply: ", "de": "Automatische Antwort: ",
                       "fr": "Réponse automatique : "}[locale] + original
            headers = {"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"}
        elif variant == 1:
            subject = "Re: " + original
            headers = {"X-Autoreply": "yes"}
        elif variant == 2:
            subject = {"en": "Out of Office: ", "de": "Abwesenheitsnotiz: ", "fr": "Absence : "}[locale] + original
        elif variant == 3:
            subject = "Your request has been received"
            headers = {"Precedence": "bulk"}
        elif variant == 4:
            subject = "Out of Office: " + original
            headers = {"Auto-Submitted": "auto-generated"}
        else:
            subject = {"en": "Auto: ", "de": "Abwesend: ", "fr": "Réponse automatique : "}[locale] + original
            headers = {"X-Autoreply": "yes", "Auto-Submitted": "auto-replied"}
        text = {
            "en": f"I am out of the office until {self._tick().date() + timedelta(days=7)} with limited access "
                  "to e-mail. For urgent matters please contact my colleague.",
            "de": "Ich bin bis einschließlich nächsten Freitag nicht im Büro. In dringenden Fällen wenden Sie "
                  "sich bitte an meine Kollegin.",
            "fr": "Je suis absent(e) du bureau jusqu'à vendredi prochain. Pour toute urgence, merci de contacter "
                  "ma collègue.",
        }[locale]
        mid = self._mid(contact)
        irt = refs = None
        if thread is not None:
            irt = thread.known_ids[-1] if rng.random() < 0.5 else None
            refs = thread.known_ids[-3:]
            if irt is None:  # answering the helpdesk's mail: unknown In-Reply-To, known References
                irt = self._unknown_mid()
                refs = [*refs, irt]
        raw = self._message(contact=contact, subject=subject, body=text + "\n", message_id=mid,
                            fmt="plain" if rng.random() < 0.7 else "alternative", in_reply_to=irt,
                            references=refs, headers=headers)
        return raw, Truth(mid, "auto", thread.id if thread else None, auto=True, first_of_thread=False)

    def corpus(self, n: int) -> Corpus:
        threads: list[Thread] = []
        mails: list[bytes] = []
        truth: list[Truth] = []
        for _ in range(n):
            roll = self.rng.random()
            if not threads or roll < 0.55:
                raw, t = self.new_enquiry(threads)
            elif roll < 0.85:
                raw, t = self.reply(threads)
            elif roll < 0.95:
                raw, t = self.auto_reply(threads)
            elif self.rng.random() < 0.6:
                raw, t = self.new_enquiry(threads, heavy=True)
            else:
                raw, t = self.reply(threads, heavy=True)
            mails.append(raw)
            truth.append(t)
        orgs = []
        for index, (slug, name, _locale) in enumerate(ORGS):
            known = self.by_org[index][:1]
            orgs.append({
                "name": name,
                "domains": [f"{slug}.example"],
                "contacts": [{"name": c.name, "addresses": [c.address]} for c in known],
            })
        return Corpus(mails=mails, truth=truth, threads=len(threads), orgs=orgs)


def _ascii(name: str) -> str:
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
    folded = unicodedata.normalize("NFKD", name.translate(table))
    return "".join(ch for ch in folded if ch.isascii() and (ch.isalnum() or ch == "-"))


def _encodable(value: str, codec: str) -> bool:
    try:
        value.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_corpus(n: int, seed: int) -> Corpus:
    return Generator(seed).corpus(n)


# ============================================================================================
# Environment: Dovecot, configuration, databases
# ============================================================================================


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU(s) (nproc {len(os.sched_getaffinity(0))}), {cpu}; " \
           f"{platform.system()} {platform.release()}; Python {platform.python_version()}"


def start_dovecot() -> Any:
    from tests.servers.dovecot import Dovecot, dovecot_available

    reason = dovecot_available()
    if reason:
        sys.exit(f"cannot run the benchmark: {reason}")
    server = Dovecot()
    server.start()
    return server


def load_mailbox(server: Any, corpus: Corpus) -> tuple[str, float]:
    """A fresh IMAP user with the corpus in its INBOX; returns (user, seconds)."""
    user = f"bench{uuid.uuid4().hex[:8]}"
    server.add_user(user, "pw-" + user)
    started = time.perf_counter()
    uids = server.append_many(user, corpus.mails)
    elapsed = time.perf_counter() - started
    assert len(uids) == len(corpus.mails)
    return user, elapsed


def config_data(server: Any, user: str, corpus: Corpus, database_url: str) -> dict[str, Any]:
    from tests.conftest import base_config, mailbox_entry

    data = base_config(organisations=corpus.orgs)
    data["database_url"] = database_url
    data["listener"] = {"enabled": False}
    data["channels"][0]["mailboxes"] = [
        mailbox_entry(server, user, "imap", after_import="move", batch_size=200, idle=False, timeout=120)
    ]
    return data


class Database:
    """A fresh database per run: a SQLite file in the work directory, or a private PostgreSQL
    database created on the server named by ``--database-url`` (and dropped afterwards)."""

    def __init__(self, base_url: str | None, workdir: Path, label: str) -> None:
        self.base_url = base_url
        self.admin: Engine | None = None
        self.name: str | None = None
        if base_url is None:
            self.url = f"sqlite:///{workdir / f'{label}.db'}"
            return
        parsed = make_url(base_url)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "bench.db")
            target = path.with_name(f"{path.stem}-{label}{path.suffix or '.db'}")
            for suffix in ("", "-wal", "-shm"):
                Path(str(target) + suffix).unlink(missing_ok=True)
            self.url = f"sqlite:///{target}"
            return
        from helpdesk.store.db import make_engine

        self.admin = make_engine(base_url, isolation_level="AUTOCOMMIT")
        self.name = f"helpdesk_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = parsed.set(database=self.name).render_as_string(hide_password=False)

    @property
    def kind(self) -> str:
        return make_url(self.url).get_backend_name()

    def drop(self) -> None:
        if self.admin is not None and self.name is not None:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


# ============================================================================================
# Verification against the ground truth
# ============================================================================================


@dataclass
class Check:
    stored: int
    pending: int
    outcomes: Counter[str]
    tickets: int
    threads: int
    follow_ups: int
    follow_ups_threaded: int
    auto_replies: int
    auto_ticketed: int
    auto_threaded: int
    auto_with_thread: int
    misthreaded: list[str]

    @property
    def accuracy(self) -> float:
        return self.follow_ups_threaded / self.follow_ups if self.follow_ups else 1.0


def verify(url: str, corpus: Corpus) -> Check:
    from helpdesk.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT message_id, state, outcome, ticket_id FROM raw_message")).all()
            tickets = int(conn.execute(text("SELECT count(*) FROM ticket")).scalar_one())
    finally:
        engine.dispose()
    by_mid = {r.message_id: r for r in rows if r.message_id}
    first_ticket: dict[int, int | None] = {}
    for t in corpus.truth:
        if t.first_of_thread and t.thread is not None:
            row = by_mid.get(t.message_id)
            first_ticket[t.thread] = row.ticket_id if row else None
    follow_ups = threaded = autos = auto_ticketed = auto_threaded = auto_with_thread = 0
    wrong: list[str] = []
    for t in corpus.truth:
        row = by_mid.get(t.message_id)
        if t.auto:
            autos += 1
            if row is not None and row.outcome == "ticket":
                auto_ticketed += 1
            if t.thread is not None:
                auto_with_thread += 1
                want = first_ticket.get(t.thread)
                auto_threaded += int(row is not None and want is not None and row.ticket_id == want)
        elif not t.first_of_thread:
            follow_ups += 1
            want = first_ticket.get(t.thread) if t.thread is not None else None
            if row is not None and want is not None and row.ticket_id == want:
                threaded += 1
            elif len(wrong) < 10:
                wrong.append(f"{t.kind} <{t.message_id}>: ticket {row.ticket_id if row else None}, "
                             f"outcome {row.outcome if row else 'not stored'}, expected ticket {want}")
    return Check(
        stored=len(rows), pending=sum(1 for r in rows if r.state == "pending"),
        outcomes=Counter(r.outcome or "(none)" for r in rows), tickets=tickets, threads=corpus.threads,
        follow_ups=follow_ups, follow_ups_threaded=threaded, auto_replies=autos, auto_ticketed=auto_ticketed,
        auto_threaded=auto_threaded, auto_with_thread=auto_with_thread, misthreaded=wrong,
    )


# ============================================================================================
# End-to-end runs
# ============================================================================================


@dataclass
class Run:
    load_average: float  # 1-minute load average of the machine when the run started
    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    load_seconds: float
    check: Check | None
    returncode: int
    output: str


def run_child(config_path: Path, database_url: str, log_path: Path) -> tuple[float, float, float, int]:
    """``helpdesk -c cfg run --once`` as a child; returns (wall s, CPU s, peak RSS MB, exit code).

    The peak RSS comes from GNU time (``/usr/bin/time``) when installed: ``wait4`` on a direct child
    would report at least this process's own RSS (it holds the corpus), because Linux carries the
    parent's high-water mark over fork and exec."""
    env = dict(os.environ, HELPDESK_DATABASE_URL=database_url)
    env.pop("HELPDESK_CONFIG", None)
    command = [str(HELPDESK_BIN), "-c", str(config_path), "run", "--once"]
    usage_path = log_path.with_suffix(".rusage")
    if GNU_TIME.exists():
        command = [str(GNU_TIME), "-f", "%U %S %M", "-o", str(usage_path), *command]
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=config_path.parent)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu, rss_kb = usage.ru_utime + usage.ru_stime, float(usage.ru_maxrss)
    if GNU_TIME.exists() and usage_path.exists():
        fields = usage_path.read_text().split()[-3:]
        with contextlib.suppress(ValueError, IndexError):
            cpu, rss_kb = float(fields[0]) + float(fields[1]), float(fields[2])
    return elapsed, cpu, rss_kb / 1024.0, proc.returncode


def one_run(server: Any, corpus: Corpus, workdir: Path, base_url: str | None, label: str) -> Run:
    user, load_seconds = load_mailbox(server, corpus)
    load_average = os.getloadavg()[0]
    db = Database(base_url, workdir, label)
    try:
        cfg_path = workdir / f"{label}.yaml"
        cfg_path.write_text(yaml.safe_dump(config_data(server, user, corpus, db.url), sort_keys=False))
        log_path = workdir / f"{label}.log"
        seconds, cpu, rss, code = run_child(cfg_path, db.url, log_path)
        output = log_path.read_text(errors="replace")
        check = verify(db.url, corpus) if code == 0 else None
        left = server.message_count(user)
        if left:
            output += f"\n(bench) {left} message(s) left in INBOX after the run\n"
    finally:
        db.drop()
    return Run(load_average, seconds, cpu, rss, load_seconds, check, code, output)


def report_runs(args: argparse.Namespace, corpus: Corpus, runs: list[Run], idle: Run, db_kind: str) -> None:
    n = len(corpus.mails)
    times = [r.seconds for r in runs]
    median = statistics.median(times)
    rate = n / median
    net = max(median - idle.seconds, 1e-9)
    kinds = Counter(t.kind for t in corpus.truth)
    heavy_mb = sum(len(m) for m in corpus.mails if len(m) > 40_000) / 1e6
    print()
    print("=" * 78)
    print("helpdesk ingestion benchmark: IMAP (Dovecot) -> helpdesk run --once")
    print("=" * 78)
    print(f"machine        {machine()}")
    print(f"database       {db_kind}{' (' + args.database_url + ')' if args.database_url else ' (fresh file per run)'}")
    print(f"corpus         N={n}, seed {args.seed}, {corpus.size_bytes / 1e6:.1f} MB "
          f"({heavy_mb:.1f} MB in mails > 40 KB), {corpus.threads} threads")
    print("               " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"IMAP load      append_many {statistics.median(r.load_seconds for r in runs):.2f} s (not timed below)")
    print(f"startup        {idle.seconds:.2f} s for run --once on an empty mailbox "
          f"(interpreter, imports, migrations, IMAP login), peak RSS {idle.max_rss_mb:.0f} MB")
    print()
    for i, r in enumerate(runs, 1):
        print(f"run {i}          {r.seconds:7.2f} s   {n / r.seconds:7.1f} msg/s   CPU {r.cpu_seconds:6.2f} s "
              f"({100 * r.cpu_seconds / r.seconds:.0f}% of wall)   peak RSS {r.max_rss_mb:6.1f} MB   "
              f"load avg {r.load_average:.1f}")
    print(f"median         {median:7.2f} s   {rate:7.1f} msg/s   (without startup: {n / net:.1f} msg/s, "
          f"{1e3 * net / n:.2f} ms/msg)")
    cpu = statistics.median(r.cpu_seconds for r in runs)
    print(f"child CPU      {cpu:.2f} s median = {n / cpu:.0f} msg per CPU-second (user+sys of helpdesk only; "
          "Dovecot not included)")
    print(f"peak RSS       {max(r.max_rss_mb for r in runs):.1f} MB (max over runs)")
    if max(r.load_average for r in runs) > 1.5:
        print("note           the machine was busy (load average above); wall times are pessimistic")
    check = runs[-1].check
    if check is not None:
        print()
        print(f"stored         {check.stored}/{n} raw messages, {check.pending} still pending")
        print("outcomes       " + ", ".join(f"{k} {v}" for k, v in sorted(check.outcomes.items())))
        print(f"threading      {check.follow_ups_threaded}/{check.follow_ups} follow-ups in their thread's ticket "
              f"= {100 * check.accuracy:.2f}%")
        print(f"tickets        {check.tickets} tickets for {check.threads} threads"
              f" ({'OK' if check.tickets == check.threads else 'MISMATCH'})")
        print(f"auto-replies   {check.auto_ticketed}/{check.auto_replies} opened a ticket (must be 0); "
              f"{check.auto_threaded}/{check.auto_with_thread} referencing a thread were filed in its ticket")
        for line in check.misthreaded:
            print(f"  misthreaded: {line}")
    print()
    ok_rate = rate >= TARGET_MSG_S
    ok_thread = check is not None and check.accuracy == 1.0 and check.tickets == check.threads
    ok_auto = check is not None and check.auto_ticketed == 0
    print(f"target         >= {TARGET_MSG_S:.0f} msg/s: {'MET' if ok_rate else 'NOT MET'} ({rate:.0f});  "
          f"every follow-up threaded: {'yes' if ok_thread else 'NO'};  "
          f"no auto-reply ticketed: {'yes' if ok_auto else 'NO'}")


def benchmark(args: argparse.Namespace, corpus: Corpus, workdir: Path) -> int:
    server = start_dovecot()
    try:
        print("startup run (empty mailbox) ...", flush=True)
        empty = Corpus(mails=[], truth=[], threads=0, orgs=corpus.orgs)
        idle = one_run(server, empty, workdir, args.database_url, "idle")
        if idle.returncode != 0:
            print(idle.output[-4000:])
            return 1
        runs: list[Run] = []
        for i in range(1, args.runs + 1):
            print(f"run {i}/{args.runs}: loading {len(corpus.mails)} mails into Dovecot, then run --once ...",
                  flush=True)
            run = one_run(server, corpus, workdir, args.database_url, f"run{i}")
            if run.returncode != 0:
                print(f"helpdesk run --once exited with {run.returncode}:\n{run.output[-4000:]}")
                return 1
            if "(bench)" in run.output or "quarantined" in run.output:
                notes = [line for line in run.output.splitlines() if "(bench)" in line or "quarantined" in line]
                print("\n".join(notes[:10]))
            runs.append(run)
            print(f"  {run.seconds:.2f} s, {len(corpus.mails) / run.seconds:.0f} msg/s", flush=True)
    finally:
        server.close()
    db_kind = make_url(args.database_url).get_backend_name() if args.database_url else "sqlite"
    report_runs(args, corpus, runs, idle, db_kind)
    return 0


# ============================================================================================
# Profile: stage timers and cProfile, in-process
# ============================================================================================


class StageTimer:
    """Wall-clock timers around chosen functions; exclusive time (minus nested timed calls) per stage,
    so the stages add up to the whole run."""

    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._stack: list[float] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def wrap(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        stack, exclusive, calls = self._stack, self.exclusive, self.calls
        clock = time.perf_counter

        @functools.wraps(func)
        def timed(*a: Any, **kw: Any) -> Any:
            stack.append(0.0)
            started = clock()
            try:
                return func(*a, **kw)
            finally:
                spent = clock() - started
                nested = stack.pop()
                exclusive[label] += spent - nested
                calls[label] += 1
                if stack:
                    stack[-1] += spent

        return timed

    def patch(self, owner: Any, name: str, label: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._patched.append((owner, name, original))
        setattr(owner, name, self.wrap(label, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()


def instrument(timer: StageTimer) -> None:
    import imapclient
    import sqlalchemy.orm
    import sqlmodel

    from helpdesk.daemon import Daemon
    from helpdesk.intake import prepare, runner
    from helpdesk.mail import classify
    from helpdesk.mailboxes.imap import ImapMailbox
    from helpdesk.store import queries

    timer.patch(Daemon, "run_once", "driver: poll loop, Incoming objects, results (rest)")
    timer.patch(imapclient.IMAPClient, "fetch", "IMAP fetch (BODY.PEEK[] per batch)")
    for name in ("search", "select_folder", "move", "login", "folder_exists", "capabilities"):
        timer.patch(imapclient.IMAPClient, name, "IMAP search/select/move/login")
    timer.patch(ImapMailbox, "_advance", "mailbox_state update per batch")
    timer.patch(runner.Intake, "store", "raw store: RawMessage rows (Python side)")
    timer.patch(runner.Intake, "process", "process(): session/transaction, _result")
    timer.patch(runner, "make_plan", "steps: glue, route, rules, decide")
    timer.patch(prepare, "parse_message", "parse (helpdesk.mail.parse)")
    timer.patch(classify, "detect_bounce", "bounce detection (helpdesk.mail.bounce)")
    timer.patch(prepare, "fingerprint", "duplicate fingerprint (helpdesk.mail.threading)")
    timer.patch(prepare, "classify", "classify: auto-reply headers/subject")
    timer.patch(prepare, "split_reply", "quote splitting (helpdesk.mail.quotes)")
    timer.patch(prepare, "split_reply_html", "quote splitting (helpdesk.mail.quotes)")
    timer.patch(runner, "apply_plan", "apply: Ticket/Item/Audit objects")
    for name in ("store_raw", "store_raw_many", "earlier_copy", "contact_ids_by_address", "organisation_for_domain",
                 "ticket_by_number", "ticket_by_message_ids", "next_ticket_number", "create_contact",
                 "store_blob", "known_source_keys", "channel_ids", "insert_item", "insert_ticket", "update_row",
                 "audit", "insert_attachments"):
        if hasattr(queries, name):
            timer.patch(queries, name, f"query: {name}")
    timer.patch(sqlalchemy.orm.Session, "flush", "ORM flush (INSERT/UPDATE)")
    timer.patch(sqlalchemy.orm.Session, "commit", "commit (ORM + SQLite COMMIT)")
    timer.patch(sqlalchemy.orm.Session, "get", "session.get (PK lookups)")
    timer.patch(sqlmodel.Session, "exec", "session.exec (SELECT via SQLModel)")
    timer.patch(sqlalchemy.orm.Session, "close", "session close / rollback")
    timer.patch(sqlalchemy.orm.Session, "begin_nested", "SAVEPOINT (store_raw begin_nested)")


@contextmanager
def sql_counter(engine: Engine) -> Iterator[dict[str, Any]]:
    stats: dict[str, Any] = {"count": Counter(), "seconds": 0.0}
    starts: list[float] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        stats["count"][verb] += 1
        starts.append(time.perf_counter())

    def after(*_a: Any) -> None:
        stats["seconds"] += time.perf_counter() - starts.pop()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield stats
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def _in_process_daemon(server: Any, corpus: Corpus, workdir: Path, base_url: str | None, label: str) -> Any:
    from helpdesk.config import validate
    from helpdesk.daemon import Daemon

    user, _ = load_mailbox(server, corpus)
    db = Database(base_url, workdir, label)
    data = config_data(server, user, corpus, db.url)
    data["parse_workers"] = 0  # the profile attributes all work to this process
    daemon = Daemon(validate(data))
    return daemon, db


def profile(args: argparse.Namespace, corpus: Corpus, workdir: Path) -> int:
    n = len(corpus.mails)
    server = start_dovecot()
    try:
        # 1. stage timers (cheap; the figures are close to an uninstrumented run)
        daemon, db = _in_process_daemon(server, corpus, workdir, args.database_url, "stages")
        timer = StageTimer()
        instrument(timer)
        try:
            with sql_counter(daemon.engine) as sql:
                started, cpu_started = time.perf_counter(), time.process_time()
                summary = daemon.run_once()
                total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            timer.restore()
            daemon.engine.dispose()
        fetched = sum(r.fetched for r in summary.reports)
        check = verify(db.url, corpus)
        db.drop()
        # 2. cProfile
        daemon, db = _in_process_daemon(server, corpus, workdir, args.database_url, "cprofile")
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        daemon.run_once()
        profiler.disable()
        profiled = time.perf_counter() - started
        if args.profile_out:
            profiler.dump_stats(args.profile_out)
        daemon.engine.dispose()
        db.drop()
    finally:
        server.close()

    print()
    print("=" * 100)
    print(f"helpdesk ingestion profile: N={n} in-process ({fetched} fetched), {machine()}")
    print("=" * 100)
    print(f"stage timers: {total:.2f} s = {n / total:.0f} msg/s (instrumented, in-process, no startup); "
          f"process CPU {cpu:.2f} s = {n / cpu:.0f} msg per CPU-second; load avg {os.getloadavg()[0]:.1f}")
    print(f"result: threading {100 * check.accuracy:.2f}%, auto-replies ticketed {check.auto_ticketed}, "
          f"{check.tickets} tickets for {check.threads} threads")
    print()
    print(f"{'stage (exclusive wall time)':60} {'s':>7} {'%':>6} {'µs/msg':>8} {'calls':>7}")
    for label, seconds in sorted(timer.exclusive.items(), key=lambda kv: -kv[1]):
        print(f"{label[:60]:60} {seconds:7.3f} {100 * seconds / total:6.1f} {1e6 * seconds / n:8.0f} "
              f"{timer.calls[label]:7d}")
    accounted = sum(timer.exclusive.values())
    print(f"{'(outside the timed functions)':60} {total - accounted:7.3f} {100 * (total - accounted) / total:6.1f}")
    statements = sum(sql["count"].values())
    print()
    print(f"SQL: {statements} statements = {statements / n:.1f} per message; time inside the DBAPI "
          f"(cursor.execute) {sql['seconds']:.2f} s = {100 * sql['seconds'] / total:.0f}% of the run, "
          f"{1e6 * sql['seconds'] / max(statements, 1):.0f} µs/statement")
    print("     " + ", ".join(f"{verb} {count}" for verb, count in sql["count"].most_common()))
    print()
    print(f"cProfile run: {profiled:.2f} s (profiler overhead included); top 25 by cumulative time")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(25)
    print(_trim_pstats(out.getvalue()))
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(20)
    print("top 20 by own time")
    print(_trim_pstats(out.getvalue()))
    return 0


def _trim_pstats(report: str) -> str:
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line[:150] for line in lines[start:] if line.strip())


# ============================================================================================
# Command line
# ============================================================================================


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HELPDESK_REPLY_SECRET", "bench-reply-secret")  # signs the acknowledgements
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="number of mails (default 5000; 2000 with --profile)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--database-url", default=None,
                        help="postgresql://user@host/db: a private database is created on that server per run "
                             "and dropped after it; sqlite:///path.db: path-runN.db files (default: temp files)")
    parser.add_argument("--seed", type=int, default=7, help="RNG seed of the mail corpus (default 7)")
    parser.add_argument("--profile", action="store_true",
                        help="in-process stage timers and cProfile instead of the timed subprocess runs")
    parser.add_argument("--profile-out", default=None, help="with --profile: save the cProfile stats to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, databases)")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (2000 if args.profile else 5000)
    if n < 1 or args.runs < 1:
        parser.error("-n and --runs must be positive")
    if not args.profile and not HELPDESK_BIN.exists():
        parser.error(f"{HELPDESK_BIN} missing: run .venv/bin/pip install -e .")
    started = time.perf_counter()
    corpus = build_corpus(n, args.seed)
    print(f"generated {n} mails ({corpus.size_bytes / 1e6:.1f} MB, {corpus.threads} threads) "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-bench-"))
    try:
        return profile(args, corpus, workdir) if args.profile else benchmark(args, corpus, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

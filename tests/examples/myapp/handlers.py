"""Job handlers of the example application.

Handlers are built by factories that take their dependencies (an email client, a payment
gateway), so tests pass fakes and production passes real clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from jobbuf import Job

Handler = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    body: str


class EmailClient(Protocol):
    async def send(self, email: Email) -> None: ...


@dataclass
class FakeEmailClient:
    """Records what would have been sent."""

    sent: list[Email] = field(default_factory=list)

    async def send(self, email: Email) -> None:
        self.sent.append(email)


def welcome_email_handler(client: EmailClient) -> Handler:
    """Job payload: ``{"email": ..., "name": ...}``."""

    async def send_welcome_email(job: Job) -> None:
        user = job.payload
        if "@" not in user["email"]:
            raise ValueError(f"not an email address: {user['email']!r}")
        await client.send(Email(user["email"], f"Welcome, {user['name']}!", "Thanks for signing up."))

    return send_welcome_email


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time (worth retrying)."""


@dataclass
class FlakyGateway:
    """A payment gateway that times out ``failures`` times, then works."""

    failures: int = 0
    charged: list[tuple[int, int]] = field(default_factory=list)

    async def charge(self, order: int, cents: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise GatewayTimeout(f"gateway timed out charging order {order}")
        self.charged.append((order, cents))


def charge_handler(gateway: FlakyGateway) -> Handler:
    """Job payload: ``{"order": ..., "cents": ...}``. A gateway timeout fails the attempt,
    so jobbuf retries it with backoff."""

    async def charge_order(job: Job) -> None:
        await gateway.charge(job.payload["order"], job.payload["cents"])

    return charge_order

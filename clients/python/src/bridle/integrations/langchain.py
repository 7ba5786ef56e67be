"""Vendor calls as LangChain tools that tell the model when Bridle refused them.

An agent loop that gets an exception from a tool either crashes or retries. A Bridle
refusal is neither a bug nor a transient error: it is the policy saying no (a cap reached,
an endpoint outside the token's scope, a loop stopped). `bridle_tool` turns a refusal into
the tool's answer, with the reason code, so the model can tell the user instead of trying
again; every other exception propagates as usual.

```python
from bridle.integrations.langchain import bridle_tool

with bridle.run("billing/run-42", stripe={"policy": "stripe-payments"}) as creds:
    stripe = creds.stripe()

    @bridle_tool
    def charge(amount_cents: int, account: str) -> str:
        "Take a payment of amount_cents US cents on a connected account."
        pi = stripe.v1.payment_intents.create(
            params={"amount": amount_cents, "currency": "usd"},
            options={"stripe_account": account},
        )
        return pi.id

    agent_tools = [charge]
```

Needs `langchain-core` (`pip install 'bridle-client[langchain]'`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

try:
    from langchain_core.tools import StructuredTool, ToolException
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "bridle.integrations.langchain needs LangChain: pip install 'bridle-client[langchain]'"
    ) from e

from ..errors import Refusal, refusal

F = TypeVar("F", bound=Callable[..., Any])


def refusal_message(r: Refusal) -> str:
    """What the model reads when Bridle refused a call."""
    return (
        f"Refused by Bridle ({r.reason}, HTTP {r.status}): {r.message} "
        "This is a policy decision, not an error: do not retry this call; "
        "tell the user what was refused and why."
    )


def _raise_refusal(e: Exception) -> None:
    r = refusal(e)
    if r is not None:
        raise ToolException(refusal_message(r)) from e


@overload
def bridle_tool(func: F) -> StructuredTool: ...


@overload
def bridle_tool(
    func: None = None, *, name: str | None = None, description: str | None = None
) -> Callable[[F], StructuredTool]: ...


def bridle_tool(
    func: F | None = None, *, name: str | None = None, description: str | None = None
) -> StructuredTool | Callable[[F], StructuredTool]:
    """A LangChain `StructuredTool` from a function (sync or async) that calls a vendor
    through Bridle. Its docstring is the tool's description unless `description` is given;
    its signature is the tool's arguments."""

    def build(f: F) -> StructuredTool:
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def acall(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await f(*args, **kwargs)
                except ToolException:
                    raise
                except Exception as e:
                    _raise_refusal(e)
                    raise

            return StructuredTool.from_function(
                coroutine=acall,
                name=name or f.__name__,
                description=description or inspect.getdoc(f) or f.__name__,
                handle_tool_error=True,
            )

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except ToolException:
                raise
            except Exception as e:
                _raise_refusal(e)
                raise

        return StructuredTool.from_function(
            func=call,
            name=name or f.__name__,
            description=description or inspect.getdoc(f) or f.__name__,
            handle_tool_error=True,
        )

    return build(func) if func is not None else build

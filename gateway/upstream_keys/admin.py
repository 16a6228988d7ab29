"""The admin page of upstream keys (``ProviderKey``): the secret is write-only; each key's
health at a glance, and a test that lists the upstream's models with it (``probe``).

It is typed into a password field, encrypted before it is saved
(``gateway.upstream_keys.secrets``) and never shown again: the list and the page show its last 4
characters. Leaving it blank when editing keeps the stored one. Running gateways pick changes up
within TOLLGATE_CREDENTIALS_REFRESH_SECONDS.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from gateway.models import ProviderKey
from gateway.routing.views import key_row, router_states
from gateway.runtime import get_runtime
from gateway.upstream_keys import probe, secrets
from gateway.upstream_keys.credentials import set_secret


def provider_names() -> list[str]:
    return list(get_runtime().config.providers)


class ProviderKeyForm(forms.ModelForm):
    provider = forms.ChoiceField(help_text="A provider from config.toml.")
    secret = forms.CharField(
        label="Upstream API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only: stored encrypted, never shown again. Leave blank to keep the "
        "current key.",
    )

    class Meta:
        model = ProviderKey
        fields = ("provider", "label", "secret", "is_active", "weight")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = provider_names()
        current = self.instance.provider if self.instance.pk else None
        if current and current not in names:
            names.append(current)  # a provider since removed from config.toml: keep it visible
        provider = self.fields["provider"]
        assert isinstance(provider, forms.ChoiceField)
        provider.choices = [(name, name) for name in names]

    def clean_secret(self) -> str:
        secret: str = self.cleaned_data.get("secret") or ""
        if not self.instance.pk and not secret:
            raise forms.ValidationError("Enter the upstream API key.")
        if secret and not secrets.is_configured():
            raise forms.ValidationError(
                f"Set {secrets.ENV_NAME} in the environment first: upstream keys are stored "
                "encrypted with it."
            )
        return secret

    def save(self, commit: bool = True) -> ProviderKey:
        key: ProviderKey = super().save(commit=False)
        if secret := self.cleaned_data.get("secret"):
            set_secret(key, secret)
        if commit:
            key.save()
        return key


def _health(key: ProviderKey) -> dict[str, Any]:
    """The key as the router sees it (``key_row``), worked out once per key and page: a list's
    three health columns would otherwise decrypt the key and snapshot the router three times."""
    row: dict[str, Any] | None = getattr(key, "_health_row", None)
    if row is None:
        row = key_row(key, router_states())
        key._health_row = row  # type: ignore[attr-defined]
    return row


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    """Each key with the router's view of it (healthy, cooling down...), its last success and
    its last failure: of the admin's test (``probe``), or of live calls (a 401, 403 or 429 the
    router counted against the key; per process, shared by every process with REDIS_URL).
    The router does not record live successes: it keeps nothing per call for a key that never
    failed. "Test" lists the upstream's models with the key and says what came back."""

    form = ProviderKeyForm
    list_display = (
        "provider",
        "label",
        "ends_with",
        "is_active",
        "weight",
        "router_state",
        "last_success",
        "last_failure",
    )
    list_filter = ("provider", "is_active")
    search_fields = ("label",)
    readonly_fields = ("ends_with", "updated_at", "router_state", "last_success", "last_failure")
    actions = ["test_keys"]

    class Media:
        css = {"all": ("gateway/admin.css",)}

    def get_fields(self, request: HttpRequest, obj: ProviderKey | None = None) -> Any:
        fields = ["provider", "label", "secret", "is_active", "weight"]
        if obj is None:
            return fields
        return [*fields, "ends_with", "updated_at", "router_state", "last_success", "last_failure"]

    @admin.display(description="ends with")
    def ends_with(self, obj: ProviderKey) -> str:
        return f"…{obj.last4}" if obj.last4 else ""

    @admin.display(description="router")
    def router_state(self, obj: ProviderKey) -> SafeString:
        row = _health(obj)
        if row["state"] == "cooling":
            until = f"{row['cooled_until']:%H:%M:%S}"
            return format_html('<span class="state-bad">cooling down until {}</span>', until)
        return format_html('<span class="state-{}">{}</span>', row["state"], row["state"])

    @admin.display(description="last success")
    def last_success(self, obj: ProviderKey) -> SafeString:
        """The later of the last passed test and the last answer a call got with the key (the
        router's, in the process that answers this page)."""
        live = _health(obj)["last_success"]
        successes = [(obj.test_passed_at, "test"), (live, "live")]
        known = [success for success in successes if success[0] is not None]
        if not known:
            return format_html('<span class="quiet">{}</span>', "none seen")
        moment, where = max(known, key=lambda success: success[0])
        return format_html('{} <span class="quiet">({})</span>', _moment(moment), where)

    @admin.display(description="last failure")
    def last_failure(self, obj: ProviderKey) -> SafeString:
        """The later of the last failed test and the last live failure the router saw."""
        row = _health(obj)
        failures = [
            (obj.test_failed_at, "test", obj.test_error),
            (row["last_failure"], "live", row["last_error"]),
        ]
        known = [failure for failure in failures if failure[0] is not None]
        if not known:
            return format_html('<span class="quiet">{}</span>', "none seen")
        moment, where, what = max(known, key=lambda failure: failure[0])
        return format_html(
            '{} <span class="quiet">({})</span><span class="error-type cell-clip" title="{}">{}'
            "</span>",
            _moment(moment),
            where,
            what,
            what,
        )

    def get_urls(self) -> list[URLPattern]:
        test = path(
            "<path:object_id>/test/",
            self.admin_site.admin_view(self.test_view),
            name="gateway_providerkey_test",
        )
        return [test, *super().get_urls()]

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The key page's Test button (a POST): test it, say what came back, show the page."""
        key = self.get_object(request, object_id)
        if key is None:
            raise Http404(f"No provider key with id {object_id!r}.")
        if request.method != "POST" or not self.has_change_permission(request, key):
            raise PermissionDenied
        self._test(request, [key])
        return HttpResponseRedirect(reverse("admin:gateway_providerkey_change", args=[key.pk]))

    @admin.action(description="Test selected keys (list the upstream's models)")
    def test_keys(self, request: HttpRequest, queryset: QuerySet[ProviderKey]) -> None:
        self._test(request, list(queryset))

    def _test(self, request: HttpRequest, keys: list[ProviderKey]) -> None:
        with httpx.Client(timeout=probe.TIMEOUT) as client:
            for key in keys:
                try:
                    result = probe.probe_key(key, client)
                except secrets.SecretKeyWrong as error:
                    self.message_user(request, f"Test of {key}: {error}", messages.ERROR)
                    continue
                if result.passed:
                    said, level = f"Test of {key}: OK, {result.summary}", messages.SUCCESS
                else:
                    said, level = f"Test of {key} failed: {result.summary}", messages.ERROR
                self.message_user(request, said, level)


def _moment(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"

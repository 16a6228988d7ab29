"""The admin page of upstream keys (``ProviderKey``): the secret is write-only.

It is typed into a password field, encrypted before it is saved
(``gateway.upstream_keys.secrets``) and never shown again: the list and the page show its last 4
characters. Leaving it blank when editing keeps the stored one. Running gateways pick changes up
within TOLLGATE_CREDENTIALS_REFRESH_SECONDS.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from gateway.models import ProviderKey
from gateway.runtime import get_runtime
from gateway.upstream_keys import secrets
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


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyForm
    list_display = ("provider", "label", "ends_with", "is_active", "weight", "updated_at")
    list_filter = ("provider", "is_active")
    search_fields = ("label",)
    readonly_fields = ("ends_with", "updated_at")

    def get_fields(self, request: HttpRequest, obj: ProviderKey | None = None) -> Any:
        fields = ["provider", "label", "secret", "is_active", "weight"]
        return fields if obj is None else [*fields, "ends_with", "updated_at"]

    @admin.display(description="ends with")
    def ends_with(self, obj: ProviderKey) -> str:
        return f"…{obj.last4}" if obj.last4 else ""

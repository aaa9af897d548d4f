"""The fake drive's accounts: users and their two drives, rotating refresh tokens and expiring access
tokens per app, and device sessions with the service's limit on devices."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path

from relayd_sandbox.drive_records import (
    DEVICE_POLICIES,
    DOMAIN_ID,
    JSON,
    WEB_APP_ID,
    AccessToken,
    ApiError,
    CallContext,
    DriveSettings,
    DriveUser,
    bad_parameter,
    device_offline,
    now_iso,
)
from relayd_sandbox.drive_state import DriveState


class DriveAccounts(DriveState):
    """Users, tokens and devices; ``handle_api`` authenticates every call here."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._users: dict[str, DriveUser] = {}
        self._drive_owner: dict[str, str] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, tuple[str, str]] = {}  # token → (user id, app id)
        self._devices: dict[str, list[str]] = {}  # user → x-device-ids in the order first seen
        self._sessions: set[tuple[str, str]] = set()  # (user, x-device-id) with a created session
        self._next_drive = 10_000

    def add_user(self, user_name: str) -> DriveUser:
        """Create an account with a backup (default) drive and a resource drive."""
        with self.lock:
            user = DriveUser(
                user_id=secrets.token_hex(16),
                user_name=user_name,
                default_drive_id=str(self._next_drive),
                resource_drive_id=str(self._next_drive + 1),
            )
            self._next_drive += 2
            self._users[user.user_id] = user
            self._drive_owner[user.default_drive_id] = user.user_id
            self._drive_owner[user.resource_drive_id] = user.user_id
            return user

    def issue_refresh_token(self, user: DriveUser, app_id: str = WEB_APP_ID) -> str:
        """Return a new, valid refresh token of *app_id* for *user* (a bootstrap token)."""
        with self.lock:
            token = secrets.token_hex(16)
            self._refresh[token] = (user.user_id, app_id)
            return token

    def issue_access_token(self, user: DriveUser, app_id: str = WEB_APP_ID, ttl: float | None = None) -> str:
        """Return a new access token of *app_id* for *user*, valid for *ttl* (``access_token_ttl``)."""
        with self.lock:
            token = "at." + secrets.token_urlsafe(32)
            expires_at = self.now() + (self.settings.access_token_ttl if ttl is None else ttl)
            self._access[token] = AccessToken(user.user_id, app_id, expires_at)
            return token

    def token_response(self, user: DriveUser, app_id: str = WEB_APP_ID) -> JSON:
        """Return a /v2/account/token answer for *user* with a fresh token pair of *app_id*."""
        access = self.issue_access_token(user, app_id=app_id)
        refresh = self.issue_refresh_token(user, app_id=app_id)
        ttl = self.settings.access_token_ttl
        return {
            "default_sbox_drive_id": "",
            "role": "user",
            "device_id": hashlib.md5(user.user_id.encode()).hexdigest(),
            "user_name": user.user_name,
            "need_link": False,
            "expire_time": now_iso(self.now() + ttl),
            "pin_setup": True,
            "need_rp_verify": False,
            "avatar": "",
            "user_data": {},
            "token_type": "Bearer",
            "access_token": access,
            "default_drive_id": user.default_drive_id,
            "domain_id": DOMAIN_ID,
            "refresh_token": refresh,
            "is_first_login": False,
            "user_id": user.user_id,
            "nick_name": user.user_name,
            "exist_link": [],
            "state": "",
            "expires_in": int(ttl),
            "status": "enabled",
        }

    def refresh(self, body: JSON) -> JSON:
        """Exchange a refresh token for a new pair; the old refresh token dies at once (rotation)."""
        with self.lock:
            if body.get("grant_type") != "refresh_token":
                raise bad_parameter("GrantType")
            owner = self._refresh.pop(str(body.get("refresh_token") or ""), None)
            if owner is None:
                self._counts["refresh_failures"] += 1
                raise ApiError(
                    400, "InvalidParameter.RefreshToken", "The input parameter refresh_token is not valid. "
                )
            self._counts["refreshes"] += 1
            user_id, app_id = owner
            return self.token_response(self._users[user_id], app_id=app_id)

    def authenticate(self, authorization: str | None) -> CallContext:
        """Given the Authorization header (with or without "Bearer "), return the caller; 401 else."""
        token = (authorization or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        with self.lock:
            record = self._access.get(token)
            if record is None:
                raise ApiError(401, "AccessTokenInvalid", "AccessToken is invalid. ErrValidateTokenFailed")
            if record.expires_at <= self.now():
                raise ApiError(401, "AccessTokenExpired", "AccessToken is expired. ErrValidateTokenFailed")
            return CallContext(self._users[record.user_id], token, record.app_id)

    def expire_access_tokens(self, user: DriveUser | None = None) -> None:
        """Make every access token (of *user*, or of everyone) expired: the next call gets a 401."""
        with self.lock:
            for record in self._access.values():
                if user is None or record.user_id == user.user_id:
                    record.expires_at = min(record.expires_at, self.now())

    def revoke_refresh_tokens(self, user: DriveUser | None = None) -> None:
        """Invalidate every live refresh token (of *user*, or of everyone), as a logout would."""
        with self.lock:
            for token, (owner, _app) in list(self._refresh.items()):
                if user is None or owner == user.user_id:
                    del self._refresh[token]

    def _known_device(self, user_id: str, device_id: str) -> bool:
        """Record *device_id* for *user_id*; return False once it is past the device limit."""
        seen = self._devices.setdefault(user_id, [])
        if device_id not in seen:
            seen.append(device_id)
        limit = self.settings.max_devices
        return limit is None or seen.index(device_id) < limit

    def _check_device(self, ctx: CallContext, device_id: str) -> None:
        """Refuse a call from a device past the limit, without a session, or with a signature the
        service does not accept (per ``settings.device_policy``)."""
        policy = self.settings.device_policy
        if policy not in DEVICE_POLICIES:
            raise ValueError(f"device_policy must be one of {sorted(DEVICE_POLICIES)}, not {policy!r}")
        user_id = ctx.user.user_id
        with self.lock:
            if not self._known_device(user_id, device_id):
                raise device_offline()
            if policy == "require_session" and (user_id, device_id) not in self._sessions:
                raise device_offline()
        if policy == "reject":
            raise ApiError(400, "DeviceSessionSignatureInvalid", "device session signature error")

    def log_out_device(self, user: DriveUser, device_id: str) -> None:
        """Forget *device_id* for *user*, as logging it out in the Aliyun Drive app does: its slot
        goes to the next device, and it needs a new session."""
        with self.lock:
            seen = self._devices.get(user.user_id, [])
            if device_id in seen:
                seen.remove(device_id)
            self._sessions.discard((user.user_id, device_id))

    def create_session(self, ctx: CallContext, device_id: str) -> tuple[int, JSON]:
        """/users/v1/users/device/create_session: register the device's key. A device past the
        limit gets ``result: false`` (tickstep/aliyunpan reads that as "too many devices")."""
        with self.lock:
            if not self._known_device(ctx.user.user_id, device_id):
                return 200, {"result": False, "success": False, "code": "UserDeviceOffline", "message": None}
            self._sessions.add((ctx.user.user_id, device_id))
        return 200, {"result": True, "success": True, "code": None, "message": None}

    def _drive_id(self, ctx: CallContext, body: JSON) -> str:
        drive_id = str(body.get("drive_id") or ctx.user.default_drive_id)
        if self._drive_owner.get(drive_id) != ctx.user.user_id:
            raise ApiError(404, "NotFound.Drive", "The resource drive cannot be found.")
        return drive_id

    def get_user(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/v2/user/get (on the user host): the account and its drive ids."""
        user = ctx.user
        return 200, {
            "domain_id": DOMAIN_ID,
            "user_id": user.user_id,
            "avatar": "",
            "created_at": 0,
            "updated_at": 0,
            "email": "",
            "nick_name": user.user_name,
            "phone": "",
            "role": "user",
            "status": "enabled",
            "user_name": user.user_name,
            "description": "",
            "default_drive_id": user.default_drive_id,
            "backup_drive_id": user.default_drive_id,
            "resource_drive_id": user.resource_drive_id,
            "sbox_drive_id": None,
            "user_data": {},
            "display_name": user.user_name,
        }

    def renew_session(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """renew_session: accepted for a device that passed the device checks."""
        return 200, {"result": True, "success": True, "code": None, "message": None}

    def user(self, user_id: str) -> DriveUser:
        with self.lock:
            return self._users[user_id]

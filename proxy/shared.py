"""What the replicas of a fleet share, and where it is kept: the URL-signing key, the webhook
signing secret and the images behind links.

A fleet shares a PostgreSQL billing database, so there they are kept in it: each secret once
for every replica (proxy/billing/shared_secrets.py; a data directory's own secret file, from
before, is the candidate its replica offers), and images in a table any replica serves from
(proxy/billing/images.py). On SQLite (one server, or `serve --workers N` on one data
directory) they stay in the data directory, as they always were. A `webhook_secret` in the
config is used as it is, on either.
"""

from __future__ import annotations

import base64
import secrets

from proxy.billing.db import Database
from proxy.billing.images import Images
from proxy.billing.shared_secrets import shared_secret
from proxy.config import Config
from proxy.media import DirectoryImages, ImageStore, MediaStore, load_or_create_secret

URL_SIGNING = "url-signing"
WEBHOOK_SIGNING = "webhook-signing"


def media_store(config: Config, db: Database) -> MediaStore:
    """Signed links with the shared key, to images in the shared store."""
    return MediaStore(image_store(config, db), _secret(config, db, URL_SIGNING),
                      config.image_url_ttl_s, db.clock)


def image_store(config: Config, db: Database) -> ImageStore:
    if db.engine == "postgres":
        return Images(db, config.image_url_ttl_s)
    return DirectoryImages(config.data_dir / "images", config.image_url_ttl_s)


def webhook_secret(config: Config, db: Database) -> str:
    """The `whsec_…` secret every replica signs job webhooks with."""
    if config.webhook_secret is not None:
        return config.webhook_secret.reveal()
    return "whsec_" + base64.b64encode(_secret(config, db, WEBHOOK_SIGNING)).decode()


def _secret(config: Config, db: Database, name: str) -> bytes:
    path = config.data_dir / f"{name}.key"
    if db.engine != "postgres":
        return load_or_create_secret(path)
    # The data directory's own secret, from before the fleet shared one, is this replica's
    # candidate: where it wins, links and receivers that knew it keep working.
    candidate = path.read_bytes() if path.is_file() else secrets.token_bytes(32)
    return shared_secret(db, name, candidate)

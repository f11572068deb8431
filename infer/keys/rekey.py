"""Re-keying stored API keys after the lookup key or the encryption key changed."""

from __future__ import annotations

from sqlmodel import select

from infer.db import Database
from infer.keys.service import KeyMaterial
from infer.models import ApiKey
from infer.security import apikeys


async def rekey_api_keys(db: Database, *, material: KeyMaterial, batch: int = 500) -> int:
    """Recompute every lookup digest and re-encrypt under the current key; returns the count.

    The secrets are decrypted with whichever listed key version sealed them, so keys keep
    working for their owners: nobody has to replace a key after a platform key rotation.
    """
    done = 0
    last_id = None
    while True:
        async with db.transaction() as session:
            query = select(ApiKey).order_by(ApiKey.id).limit(batch)  # type: ignore[arg-type]
            if last_id is not None:
                query = query.where(ApiKey.id > last_id)
            rows = (await session.exec(query)).all()
            for row in rows:
                secret = material.keyring.decrypt(row.key_version, row.ciphertext, aad=row.id.bytes)
                row.digest = apikeys.lookup_digest(secret.decode(), material.lookup_key)
                row.key_version, row.ciphertext = material.keyring.encrypt(secret, aad=row.id.bytes)
                session.add(row)
        if not rows:
            return done
        done += len(rows)
        last_id = rows[-1].id

-- Customers' own model-provider keys, per project or per org (the org's is the fallback), one
-- per provider and owner. Stored encrypted (AES-256-GCM under the key-encryption key, which is
-- never in the store): `ciphertext` is base64 of nonce || ciphertext || tag. `last4` is shown
-- by `list`; nothing else of the key is ever readable without the KEK.
CREATE TABLE provider_keys (
    provider    TEXT COLLATE "C" NOT NULL,
    owner_kind  TEXT COLLATE "C" NOT NULL CHECK (owner_kind IN ('project', 'org')),
    owner_id    TEXT COLLATE "C" NOT NULL,
    ciphertext  TEXT NOT NULL,
    last4       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    PRIMARY KEY (provider, owner_kind, owner_id)
);

"""Numbers of the core's shared-memory layout, as the core defines them."""
from __future__ import annotations

from . import lib

#: a partition's positions run from 0 to MAX_OFFSET, 2**OFFSET_BITS - 1
#: (inclusive), the core's GF_MAX_OFFSET: a committed offset or a ring's tail is
#: at most MAX_OFFSET, so a message's offset is below it (the core packs a
#: partition and an offset into one 64-bit return value)
OFFSET_BITS: int = lib.GF_OFFSET_BITS
MAX_OFFSET: int = lib.GF_MAX_OFFSET
#: a slot's header, before the key, headers and value
SLOT_HDR_SIZE: int = lib.GF_SLOT_HDR_SIZE
#: producers waiting for room a partition records by owner: a partition's
#: ``blocked`` count is at most this, which means at least this many
RING_WAITERS: int = lib.GF_RING_WAITERS
#: largest key and value of a metadata record
META_KEY_MAX: int = lib.GF_META_KEY_MAX
META_VAL_MAX: int = lib.GF_META_VAL_MAX

# a message's flags (the slot header's ``flags``, a batch's ``flags`` column)
MSG_HAS_KEY: int = lib.GF_MSG_HAS_KEY
MSG_STAMP: int = lib.GF_MSG_STAMP        #: a stamp (who wrote it) follows the value
MSG_TXN: int = lib.GF_MSG_TXN            #: written inside a transaction
MSG_CONTROL: int = lib.GF_MSG_CONTROL    #: a transaction marker, never handed to the application
#: bytes of a stamp (producer, epoch, sequence, transaction)
STAMP_SIZE: int = lib.GF_STAMP_SIZE

# a ring's on_full policy
FULL_OVERWRITE: int = lib.GF_FULL_OVERWRITE
FULL_BLOCK: int = lib.GF_FULL_BLOCK
FULL_RAISE: int = lib.GF_FULL_RAISE

# how a sender picks a partition
PART_KEYHASH: int = lib.GF_PART_KEYHASH
PART_ROUNDROBIN: int = lib.GF_PART_ROUNDROBIN

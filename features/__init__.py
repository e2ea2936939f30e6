"""The Feast feature repository and the feature computation it serves.

    compute.py      the feature definitions: as-of user and item features from the clean lake
    spec.py         names, versions, TTLs and the file layout (no Feast import)
    offline.py      daily offline snapshots (parquet), incremental and idempotent
    definitions.py  the Feast objects; `feast apply` inside features/ finds them
    store.py        the store from the settings: apply, materialize, training sets, status
    online.py       OnlineFeatureReader for the serving hot path
    skew.py         online/offline skew check and backfill
    bench.py        online read latency
    cli.py          `recsys features ...`

Nothing is imported here, so importing a submodule stays cheap.
"""

-- What each merchant's plugin binaries did in production, counted over
-- every run (also those not recorded): runs by outcome, and histograms of
-- instructions and host time. `metric` is `outcome`, `instructions` or
-- `duration_us`; `bucket` the outcome kind or a bucket's upper bound (`inf`
-- for the last). Kept while a merchant's plugin, shadow or recorded runs
-- refer to the digest.
CREATE TABLE plugin_counts (
    merchant_id  TEXT NOT NULL,
    digest       TEXT NOT NULL,
    metric       TEXT NOT NULL,
    bucket       TEXT NOT NULL,
    runs         BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, digest, metric, bucket)
);

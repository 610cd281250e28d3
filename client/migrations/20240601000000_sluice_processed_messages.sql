-- Messages a consumer group has already processed, keyed by their dedupe key (UNIQ_KEY by
-- default). The idempotency helper inserts a row in the same transaction as the business
-- writes; the primary key turns a redelivery into a conflict, which means "already done".
CREATE TABLE IF NOT EXISTS sluice_processed_messages (
    consumer_group  VARCHAR(255) NOT NULL,
    dedupe_key      VARCHAR(255) NOT NULL,
    topic           VARCHAR(255) NOT NULL,
    msg_id          VARCHAR(128) NOT NULL,
    processed_at_ms BIGINT       NOT NULL,
    PRIMARY KEY (consumer_group, dedupe_key)
);

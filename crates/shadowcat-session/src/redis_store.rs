//! `RedisStore`: sessions in Redis, shared by several proxy instances.

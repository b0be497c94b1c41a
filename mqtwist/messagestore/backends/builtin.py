"""
The message store backends that ship with mqtwist: Redis.
"""

from mqtwist.messagestore.redisstore import RedisBackend

redis = RedisBackend()

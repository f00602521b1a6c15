import ssl
from collections.abc import Sequence
from typing import Any, Union

def mask(key: bytes, data: Union[bytes, bytearray, memoryview]) -> bytes: ...
def send_frame_to_all(fds: Sequence[int], frame: Union[bytes, bytearray, memoryview]) -> list[tuple[int, int]]: ...
def ssl_read_ahead(sock: ssl.SSLSocket) -> bool: ...
def parse_messages(
    buf: Union[bytes, bytearray, memoryview],
    pos: int,
    masked: bool,
    limit: int,
    message_cls: type,
    events: list[Any],
) -> tuple[int, int, int]: ...

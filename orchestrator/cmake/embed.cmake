# cmake -DIN=file -DOUT=header -DNAME=symbol -P embed.cmake
# Writes a header holding the file's bytes as `inline constexpr char NAME[]` (and NAME_size),
# so the orchestrator serves its dashboard without reading files at run time.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" len)
math(EXPR size "${len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," body "${hex}")
file(WRITE "${OUT}.tmp" "#pragma once\n// Generated from ${IN} by embed.cmake; do not edit.\n#include <cstddef>\ninline constexpr char ${NAME}[] = {${body} 0};\ninline constexpr std::size_t ${NAME}_size = ${size};\n")
file(RENAME "${OUT}.tmp" "${OUT}")

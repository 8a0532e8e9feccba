/* CHECK for the C test programs (test_edgelora.c, test_train.c): on a failed condition,
 * print where, the message and the library's last error, and exit 1. */
#ifndef EDGELORA_TEST_CHECK_H
#define EDGELORA_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>

#include "edgelora.h"

#define CHECK(cond, ...)                                               \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);           \
      fprintf(stderr, __VA_ARGS__);                                    \
      fprintf(stderr, " (last error: %s)\n", edgelora_last_error());   \
      exit(1);                                                         \
    }                                                                  \
  } while (0)

#endif

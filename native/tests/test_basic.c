/* C-level smoke test: ABI version, error reporting, an elementwise op, threads. */
#include <stdio.h>
#include <string.h>

#include "tensor_ops.h"

static int failures;
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: expectation failed: %s\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

int main(void) {
    EXPECT(to_abi_version() == TO_ABI_VERSION);
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -1, 2, 0, 10}, out[5];
    EXPECT(to_add(a, b, out, 5, TO_F32) == TO_OK);
    EXPECT(out[0] == 1.5f && out[4] == 15.0f);
    EXPECT(to_add(NULL, b, out, 5, TO_F32) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(strstr(to_last_error(), "NULL") != NULL);
    EXPECT(to_add(a, b, out, 5, 99) == TO_ERR_DTYPE);
    EXPECT(to_dtype_size(TO_BF16) == 2 && to_dtype_size(1234) == -1);
    EXPECT(to_set_num_threads(2) == TO_OK && to_get_num_threads() == 2);
    char report[512];
    EXPECT(to_kernel_report(report, sizeof report) == TO_OK);
    printf("%s\n", report);
    if (failures) {
        printf("%d failed\n", failures);
        return 1;
    }
    printf("test_basic: ok\n");
    return 0;
}

/* C test of the safetensors reader: a valid file round trip and corrupted variants, each of which
 * must fail with the expected error code and a message naming the file (never crash; run under
 * ASan/UBSan by the sanitize session). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensor_ops.h"

static int failures;
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: expectation failed: %s (last error: %s)\n", __FILE__,          \
                    __LINE__, #cond, to_last_error());                                             \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static char g_dir[256];
static char g_path[512];

/* Writes an 8-byte length, the header and `data` to a fresh file; returns its path. */
static const char *write_file(const char *name, const char *header, size_t hlen, uint64_t declared,
                              const void *data, size_t dlen) {
    snprintf(g_path, sizeof g_path, "%s/%s", g_dir, name);
    FILE *fp = fopen(g_path, "wb");
    if (!fp) {
        perror(g_path);
        exit(2);
    }
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(declared >> (8 * i));
    fwrite(len, 1, 8, fp);
    if (hlen) fwrite(header, 1, hlen, fp);
    if (dlen) fwrite(data, 1, dlen, fp);
    fclose(fp);
    return g_path;
}

static const char *write_st(const char *name, const char *header, const void *data, size_t dlen) {
    return write_file(name, header, strlen(header), strlen(header), data, dlen);
}

/* Opens `path` expecting failure with `code`; checks the message names the file and contains
 * `needle`. */
static void expect_fail(const char *path, int code, const char *needle, int line) {
    to_st_file *f = (to_st_file *)0x1;
    int rc = to_st_open(path, &f);
    if (rc != code || f != NULL || strstr(to_last_error(), path) == NULL ||
        (needle && strstr(to_last_error(), needle) == NULL)) {
        fprintf(stderr, "line %d: %s: expected code %d with '%s', got %d: %s\n", line, path, code,
                needle ? needle : "", rc, to_last_error());
        failures++;
    }
    if (rc == TO_OK) to_st_close(f);
}
#define FAIL(name, header, data, dlen, code, needle)                                               \
    expect_fail(write_st(name, header, data, dlen), code, needle, __LINE__)

static void test_valid(void) {
    /* 16 bytes of f32 [2, 2], 6 bytes of bf16 [3], an empty tensor, a 0-d i8, padding spaces. */
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\",\"caf\\u00e9\":\"\\ud83d\\ude00\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
        "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[22,22]},"
        "\"scalar\":{\"data_offsets\":[22,23],\"shape\":[],\"dtype\":\"I8\"}}   ";
    unsigned char data[23];
    float w[4] = {1.0f, -2.0f, 3.5f, 0.25f};
    memcpy(data, w, 16);
    uint16_t b[3] = {0x3f80, 0x4000, 0xbf80};
    memcpy(data + 16, b, 6);
    data[22] = 0xfe;
    const char *path = write_st("valid.safetensors", header, data, sizeof data);
    to_st_file *f = NULL;
    EXPECT(to_st_open(path, &f) == TO_OK);
    if (!f) return;
    int64_t n = -1, idx = -1, nbytes = -1, fsize, hsize, dsize;
    EXPECT(to_st_count(f, &n) == TO_OK && n == 4);
    const char *name;
    int dtype, ndim;
    int64_t shape[TO_ST_MAX_DIMS];
    const void *ptr;
    /* sorted by name: b, empty, scalar, w */
    EXPECT(to_st_tensor_info(f, 0, &name, &dtype, &ndim, shape, &ptr, &nbytes) == TO_OK);
    EXPECT(strcmp(name, "b") == 0 && dtype == TO_BF16 && ndim == 1 && shape[0] == 3 && nbytes == 6);
    EXPECT(memcmp(ptr, b, 6) == 0);
    EXPECT(to_st_find(f, "w", &idx) == TO_OK && idx == 3);
    EXPECT(to_st_tensor_info(f, idx, &name, &dtype, &ndim, shape, &ptr, &nbytes) == TO_OK);
    EXPECT(dtype == TO_F32 && ndim == 2 && shape[0] == 2 && shape[1] == 2 && shape[2] == 0);
    EXPECT(nbytes == 16 && memcmp(ptr, w, 16) == 0);
    EXPECT(to_st_find(f, "scalar", &idx) == TO_OK && idx == 2);
    EXPECT(to_st_tensor_info(f, idx, NULL, &dtype, &ndim, NULL, &ptr, &nbytes) == TO_OK);
    EXPECT(dtype == TO_I8 && ndim == 0 && nbytes == 1 && *(const unsigned char *)ptr == 0xfe);
    EXPECT(to_st_find(f, "empty", &idx) == TO_OK);
    EXPECT(to_st_tensor_info(f, idx, NULL, NULL, &ndim, shape, NULL, &nbytes) == TO_OK);
    EXPECT(ndim == 2 && shape[0] == 0 && shape[1] == 5 && nbytes == 0);
    EXPECT(to_st_find(f, "missing", &idx) == TO_ERR_INVALID_ARGUMENT && idx == -1);
    EXPECT(strstr(to_last_error(), "missing") && strstr(to_last_error(), path));
    EXPECT(to_st_tensor_info(f, 4, NULL, NULL, NULL, NULL, NULL, NULL) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_tensor_info(f, -1, NULL, NULL, NULL, NULL, NULL, NULL) == TO_ERR_INVALID_ARGUMENT);
    const char *k, *v;
    EXPECT(to_st_metadata_count(f, &n) == TO_OK && n == 2);
    EXPECT(to_st_metadata_item(f, 0, &k, &v) == TO_OK);
    EXPECT(strcmp(k, "caf\xc3\xa9") == 0 && strcmp(v, "\xf0\x9f\x98\x80") == 0);
    EXPECT(to_st_metadata_item(f, 1, &k, &v) == TO_OK);
    EXPECT(strcmp(k, "format") == 0 && strcmp(v, "pt") == 0);
    EXPECT(to_st_metadata_item(f, 2, &k, &v) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_file_info(f, &fsize, &hsize, &dsize) == TO_OK);
    EXPECT(dsize == 23 && hsize == (int64_t)strlen(header) && fsize == 8 + hsize + 23);
    EXPECT(to_st_prefetch(f, 0, 23, TO_ST_WILLNEED) == TO_OK);
    EXPECT(to_st_prefetch(f, 5, 18, TO_ST_TOUCH) == TO_OK);
    EXPECT(to_st_prefetch(f, 5, 19, TO_ST_TOUCH) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_prefetch(f, -1, 1, TO_ST_TOUCH) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_prefetch(f, 0, 1, 7) == TO_ERR_INVALID_ARGUMENT);
    /* reference counting: data stays valid after the opener's close */
    EXPECT(to_st_retain(f) == TO_OK);
    EXPECT(to_st_close(f) == TO_OK);
    EXPECT(memcmp(ptr, "\xfe", 1) == 0);
    EXPECT(to_st_close(f) == TO_OK);
    EXPECT(to_st_close(NULL) == TO_OK);
    EXPECT(to_st_retain(NULL) == TO_ERR_INVALID_ARGUMENT);

    /* no tensors at all is valid */
    to_st_file *g = NULL;
    EXPECT(to_st_open(write_st("nothing.safetensors", "{}", NULL, 0), &g) == TO_OK);
    EXPECT(g && to_st_count(g, &n) == TO_OK && n == 0);
    to_st_close(g);
}

static void test_corrupt(void) {
    unsigned char data[64] = {0};
    char deep[600];
    /* arguments */
    to_st_file *f = NULL;
    EXPECT(to_st_open(NULL, &f) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_open("x", NULL) == TO_ERR_INVALID_ARGUMENT);
    EXPECT(to_st_open("", &f) == TO_ERR_INVALID_ARGUMENT);
    /* files */
    snprintf(g_path, sizeof g_path, "%s/does-not-exist.safetensors", g_dir);
    expect_fail(g_path, TO_ERR_IO, "No such file", __LINE__);
    expect_fail(g_dir, TO_ERR_IO, "directory", __LINE__);
    expect_fail(write_file("nohdr.safetensors", NULL, 0, 0, NULL, 0), TO_ERR_FORMAT, "start with",
                __LINE__);
    /* an empty (0-byte) file */
    snprintf(g_path, sizeof g_path, "%s/zero.safetensors", g_dir);
    fclose(fopen(g_path, "wb"));
    expect_fail(g_path, TO_ERR_FORMAT, "too small", __LINE__);
    /* header length */
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    expect_fail(write_file("huge.safetensors", ok, strlen(ok), 1ull << 63, data, 4), TO_ERR_FORMAT,
                "exceeds", __LINE__);
    expect_fail(write_file("long.safetensors", ok, strlen(ok), strlen(ok) + 5, data, 4),
                TO_ERR_FORMAT, "larger than", __LINE__);
    expect_fail(write_file("short.safetensors", ok, strlen(ok), strlen(ok) - 1, data, 4),
                TO_ERR_FORMAT, NULL, __LINE__);
    /* truncated data */
    FAIL("trunc.safetensors", ok, data, 3, TO_ERR_FORMAT, "exceed the data region");
    FAIL("trailing.safetensors", ok, data, 5, TO_ERR_FORMAT, "trailing bytes");
    /* JSON syntax */
    FAIL("notjson.safetensors", "{\"a\":}", data, 0, TO_ERR_FORMAT, "unexpected");
    FAIL("garbage.safetensors", "{} x", data, 0, TO_ERR_FORMAT, "trailing characters");
    FAIL("comma.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}",
         data, 4, TO_ERR_FORMAT, "string key");
    FAIL("array.safetensors", "[1]", data, 0, TO_ERR_FORMAT, "start with '{'");
    FAIL("unterminated.safetensors", "{\"a", data, 0, TO_ERR_FORMAT, "unterminated");
    FAIL("badesc.safetensors", "{\"\\x\":1}", data, 0, TO_ERR_FORMAT, "escape");
    FAIL("lonesur.safetensors", "{\"\\ud800\":1}", data, 0, TO_ERR_FORMAT, "surrogate");
    FAIL("lowsur.safetensors", "{\"\\udc00x\":1}", data, 0, TO_ERR_FORMAT, "surrogate");
    FAIL("nul.safetensors", "{\"\\u0000\":1}", data, 0, TO_ERR_FORMAT, "NUL");
    FAIL("utf8.safetensors", "{\"\xc3\x28\":1}", data, 0, TO_ERR_FORMAT, "UTF-8");
    FAIL("overlong.safetensors", "{\"\xc0\xaf\":1}", data, 0, TO_ERR_FORMAT, "UTF-8");
    FAIL("ctrl.safetensors", "{\"a\nb\":1}", data, 0, TO_ERR_FORMAT, "control");
    FAIL("dupkey.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         data, 8, TO_ERR_FORMAT, "duplicate key 'a'");
    FAIL("dupfield.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data,
         4, TO_ERR_FORMAT, "duplicate key 'dtype'");
    memset(deep, '[', sizeof deep);
    memcpy(deep, "{\"a\":", 5);
    deep[sizeof deep - 1] = '\0';
    FAIL("deep.safetensors", deep, data, 0, TO_ERR_FORMAT, "nesting");
    /* schema */
    FAIL("dtype.safetensors", "{\"t\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         data, 4, TO_ERR_FORMAT, "unknown dtype 'F33'");
    FAIL("u32.safetensors", "{\"t\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         data, 4, TO_ERR_DTYPE, "U32");
    FAIL("mismatch.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
         data, 4, TO_ERR_FORMAT, "tensor 't'");
    FAIL("negshape.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
         data, 4, TO_ERR_FORMAT, "negative");
    FAIL("floatoff.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}",
         data, 4, TO_ERR_FORMAT, "non-integer");
    FAIL("negoff.safetensors", "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[-1,-1]}}",
         data, 0, TO_ERR_FORMAT, "negative");
    FAIL("bigint.safetensors",
         "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", data,
         1, TO_ERR_FORMAT, "out of range");
    FAIL("overflow.safetensors",
         "{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}",
         data, 8, TO_ERR_FORMAT, "overflow");
    FAIL("reversed.safetensors", "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}",
         data, 4, TO_ERR_FORMAT, "< begin");
    FAIL("overlap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         data, 8, TO_ERR_FORMAT, "overlap");
    FAIL("hole.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         data, 12, TO_ERR_FORMAT, "hole");
    FAIL("missing.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 0,
         TO_ERR_FORMAT, "data_offsets");
    FAIL("extra.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", data, 4,
         TO_ERR_FORMAT, "unexpected field");
    FAIL("dims.safetensors",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", data,
         1, TO_ERR_UNSUPPORTED, "dimensions");
    FAIL("meta.safetensors", "{\"__metadata__\":{\"a\":1}}", data, 0, TO_ERR_FORMAT, "string");
    FAIL("entry.safetensors", "{\"a\":[]}", data, 0, TO_ERR_FORMAT, "object");
    /* every prefix of a valid file fails cleanly */
    const char *valid = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    size_t vlen = strlen(valid);
    unsigned char full[8 + 128 + 16];
    for (int i = 0; i < 8; i++) full[i] = (unsigned char)((uint64_t)vlen >> (8 * i));
    memcpy(full + 8, valid, vlen);
    memset(full + 8 + vlen, 0x11, 16);
    size_t total = 8 + vlen + 16;
    for (size_t cut = 0; cut < total; cut++) {
        snprintf(g_path, sizeof g_path, "%s/cut.safetensors", g_dir);
        FILE *fp = fopen(g_path, "wb");
        fwrite(full, 1, cut, fp);
        fclose(fp);
        to_st_file *h = NULL;
        int rc = to_st_open(g_path, &h);
        if (rc != TO_ERR_FORMAT || h != NULL) {
            fprintf(stderr, "cut at %zu: expected TO_ERR_FORMAT, got %d\n", cut, rc);
            failures++;
        }
        to_st_close(h);
    }
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/to_st_test_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_valid();
    test_corrupt();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    if (failures) {
        printf("test_safetensors: %d failed\n", failures);
        return 1;
    }
    printf("test_safetensors: ok\n");
    return 0;
}

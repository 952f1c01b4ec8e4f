/*
 * The C side of provisio-xslt: compile a stylesheet from memory, apply it to a document in
 * memory, collect every message libxml2/libxslt report (instead of printing them on
 * stderr), and keep the stylesheet in a sandbox: no file or network is read or written
 * (security preferences and an entity loader that refuses everything), template recursion
 * and variables bounded, output bounded.
 *
 * libxslt's generic error handler is a process-wide global, so the Rust side calls
 * pxslt_compile and pxslt_apply under one mutex; libxml2's handlers are per thread.
 *
 * Strings handed back (result, messages) are malloc'd here and released with pxslt_free.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlIO.h>
#include <libxslt/extensions.h>
#include <libxslt/extra.h>
#include <libxslt/security.h>
#include <libxslt/transform.h>
#include <libxslt/xslt.h>
#include <libxslt/xsltInternals.h>
#include <libxslt/xsltutils.h>

/* Messages longer than this are cut (a runaway stylesheet can report thousands). */
#define MAX_MESSAGES 4096

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} pxslt_buf;

static void buf_append(pxslt_buf *b, const char *s, size_t n) {
    if (b == NULL || s == NULL || b->len >= MAX_MESSAGES) {
        return;
    }
    if (b->len + n > MAX_MESSAGES) {
        n = MAX_MESSAGES - b->len;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* libxslt's (and libxml2's generic) error channel: printf-style, variadic. */
static void collect(void *ctx, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof tmp) {
        n = (int)(sizeof tmp - 1);
    }
    buf_append((pxslt_buf *)ctx, tmp, (size_t)n);
}

/* Messages outside a compile or apply call are dropped (never printed on stderr). */
static void silent(void *ctx, const char *fmt, ...) {
    (void)ctx;
    (void)fmt;
}

/* libxml2's structured errors: the message with its line. */
static void structured(void *ctx, xmlErrorPtr err) {
    if (err == NULL || err->message == NULL) {
        return;
    }
    char tmp[1200];
    int n;
    if (err->line > 0) {
        n = snprintf(tmp, sizeof tmp, "line %d: %s", err->line, err->message);
    } else {
        n = snprintf(tmp, sizeof tmp, "%s", err->message);
    }
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof tmp) {
        n = (int)(sizeof tmp - 1);
    }
    buf_append((pxslt_buf *)ctx, tmp, (size_t)n);
}

/* Refuses every external entity, DTD, document() target or import: nothing is loaded. */
static xmlParserInputPtr refuse_loader(const char *url, const char *id, xmlParserCtxtPtr ctxt) {
    (void)id;
    (void)ctxt;
    xsltGenericError(xsltGenericErrorContext,
                     "loading `%s` is refused: stylesheets run without file or network access\n",
                     url ? url : (id ? id : "(unnamed)"));
    return NULL;
}

static xsltSecurityPrefsPtr sandbox = NULL;

/* Once per process (the Rust side guards it with std::sync::Once). Returns 0 on success. */
int pxslt_init(void) {
    xmlInitParser();
    xsltInit();
    xmlSetExternalEntityLoader(refuse_loader);
    xsltSetGenericErrorFunc(NULL, silent);
    sandbox = xsltNewSecurityPrefs();
    if (sandbox == NULL) {
        return -1;
    }
    if (xsltSetSecurityPrefs(sandbox, XSLT_SECPREF_READ_FILE, xsltSecurityForbid) != 0 ||
        xsltSetSecurityPrefs(sandbox, XSLT_SECPREF_WRITE_FILE, xsltSecurityForbid) != 0 ||
        xsltSetSecurityPrefs(sandbox, XSLT_SECPREF_CREATE_DIRECTORY, xsltSecurityForbid) != 0 ||
        xsltSetSecurityPrefs(sandbox, XSLT_SECPREF_READ_NETWORK, xsltSecurityForbid) != 0 ||
        xsltSetSecurityPrefs(sandbox, XSLT_SECPREF_WRITE_NETWORK, xsltSecurityForbid) != 0) {
        return -1;
    }
    /* The default prefs guard xsl:import/xsl:include at compile time too. */
    xsltSetDefaultSecurityPrefs(sandbox);
    /* node-set() as MSXML (HMC's templates) and EXSLT spell it; libxslt has it built in
     * only under its own namespaces. */
    if (xsltRegisterExtModuleFunction((const xmlChar *)"node-set",
                                      (const xmlChar *)"urn:schemas-microsoft-com:xslt",
                                      xsltFunctionNodeSet) != 0 ||
        xsltRegisterExtModuleFunction((const xmlChar *)"node-set",
                                      (const xmlChar *)"http://exslt.org/common",
                                      xsltFunctionNodeSet) != 0) {
        return -1;
    }
    return 0;
}

static const int PARSE_OPTIONS = XML_PARSE_NONET | XML_PARSE_NOCDATA;

static void begin(pxslt_buf *b) {
    xmlSetStructuredErrorFunc(b, structured);
    xmlSetGenericErrorFunc(b, collect);
    xsltSetGenericErrorFunc(b, collect);
}

static void end(void) {
    xmlSetStructuredErrorFunc(NULL, NULL);
    xmlSetGenericErrorFunc(NULL, silent);
    xsltSetGenericErrorFunc(NULL, silent);
}

/* Hands the collected messages to *err (or a fallback text when there are none). */
static void fail_with(pxslt_buf *b, const char *fallback, char **err) {
    if (b->data == NULL || b->len == 0) {
        free(b->data);
        b->data = NULL;
        size_t n = strlen(fallback);
        char *s = malloc(n + 1);
        if (s != NULL) {
            memcpy(s, fallback, n + 1);
        }
        *err = s;
        return;
    }
    *err = b->data;
    b->data = NULL;
}

/*
 * Compiles a stylesheet held in memory. `url` names it in messages. Returns the stylesheet,
 * or NULL with the messages in *err.
 */
void *pxslt_compile(const char *text, int len, const char *url, char **err) {
    pxslt_buf b = {0};
    *err = NULL;
    begin(&b);
    xmlDocPtr doc = xmlReadMemory(text, len, url, "UTF-8", PARSE_OPTIONS);
    if (doc == NULL) {
        end();
        fail_with(&b, "the stylesheet is not well-formed XML", err);
        return NULL;
    }
    xsltStylesheetPtr style = xsltParseStylesheetDoc(doc);
    if (style == NULL) {
        /* On failure libxslt leaves the document to the caller. */
        xmlFreeDoc(doc);
        end();
        fail_with(&b, "the stylesheet was refused by libxslt", err);
        return NULL;
    }
    if (style->errors > 0) {
        xsltFreeStylesheet(style); /* frees doc too */
        end();
        fail_with(&b, "the stylesheet has errors", err);
        return NULL;
    }
    end();
    free(b.data);
    return style;
}

void pxslt_free_stylesheet(void *style) {
    if (style != NULL) {
        xsltFreeStylesheet((xsltStylesheetPtr)style);
    }
}

/*
 * Applies `style` to the document `src`. On success returns 0 and sets *out (the result
 * tree's top-level nodes serialized one after another, no XML declaration) and *out_len;
 * a result larger than `max_out` bytes is an error. On failure returns -1 with the
 * messages in *err. `max_depth` bounds template recursion, `max_vars` the variables.
 */
int pxslt_apply(void *style, const char *src, int len, size_t max_out, int max_depth,
                int max_vars, char **out, size_t *out_len, char **err) {
    pxslt_buf b = {0};
    *out = NULL;
    *out_len = 0;
    *err = NULL;
    xsltStylesheetPtr st = (xsltStylesheetPtr)style;
    begin(&b);
    xmlDocPtr doc = xmlReadMemory(src, len, "source.xml", "UTF-8", PARSE_OPTIONS);
    if (doc == NULL) {
        end();
        fail_with(&b, "the source node could not be read back as XML", err);
        return -1;
    }
    xsltTransformContextPtr ctxt = xsltNewTransformContext(st, doc);
    if (ctxt == NULL) {
        xmlFreeDoc(doc);
        end();
        fail_with(&b, "libxslt could not start the transformation", err);
        return -1;
    }
    xsltSetCtxtSecurityPrefs(sandbox, ctxt);
    xsltSetTransformErrorFunc(ctxt, &b, collect);
    ctxt->maxTemplateDepth = max_depth;
    ctxt->maxTemplateVars = max_vars;
    xmlDocPtr res = xsltApplyStylesheetUser(st, doc, NULL, NULL, NULL, ctxt);
    int failed = res == NULL || ctxt->state != XSLT_STATE_OK;
    xsltFreeTransformContext(ctxt);
    xmlFreeDoc(doc);
    if (failed) {
        if (res != NULL) {
            xmlFreeDoc(res);
        }
        end();
        fail_with(&b, "the transformation failed", err);
        return -1;
    }
    xmlBufferPtr buf = xmlBufferCreate();
    if (buf == NULL) {
        xmlFreeDoc(res);
        end();
        fail_with(&b, "out of memory", err);
        return -1;
    }
    int too_big = 0;
    for (xmlNodePtr n = res->children; n != NULL; n = n->next) {
        if (n->type == XML_DTD_NODE) {
            continue;
        }
        if (xmlNodeDump(buf, res, n, 0, 0) < 0) {
            too_big = 1;
            break;
        }
        if ((size_t)xmlBufferLength(buf) > max_out) {
            too_big = 1;
            break;
        }
    }
    xmlFreeDoc(res);
    if (too_big) {
        xmlBufferFree(buf);
        end();
        char msg[160];
        snprintf(msg, sizeof msg, "the result is larger than %zu bytes (the limit)", max_out);
        b.len = 0;
        fail_with(&b, msg, err);
        return -1;
    }
    size_t n = (size_t)xmlBufferLength(buf);
    char *s = malloc(n + 1);
    if (s == NULL) {
        xmlBufferFree(buf);
        end();
        fail_with(&b, "out of memory", err);
        return -1;
    }
    memcpy(s, xmlBufferContent(buf), n);
    s[n] = '\0';
    xmlBufferFree(buf);
    end();
    free(b.data);
    *out = s;
    *out_len = n;
    return 0;
}

void pxslt_free(char *s) {
    free(s);
}

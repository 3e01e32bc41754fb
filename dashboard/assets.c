/*
 * assets.c - the page and its libraries, embedded in the binary.
 *
 * dashboard/embed.py turns every file under dashboard/web/ and the browser
 * libraries named in dashboard/assets.list into build/<mode>/dashboard/
 * assets_gen.c: a table of {path, content type, bytes, length, ETag} sorted
 * by path. Nothing is read from disk at run time and nothing comes from a
 * CDN, so the Content-Security-Policy can say 'self' for everything.
 *
 * Thread: any (the table is constant).
 */
#include <stdlib.h>
#include <string.h>

#include "dashboard/dashboard-internal.h"

static int cmp_path(const void *key, const void *elem)
{
    return strcmp(key, ((const struct dash_asset *)elem)->path);
}

const struct dash_asset *dash_asset_find(const char *path)
{
    if (strcmp(path, "/") == 0)
        path = "/index.html";
    if (dash_assets_count == 0)
        return NULL;
    return bsearch(path, dash_assets, dash_assets_count, sizeof *dash_assets, cmp_path);
}

// Every chart kind (report/chart.h and one header per kind), for code that draws several.
#pragma once

#include "report/bar_chart.h"
#include "report/chart.h"
#include "report/heatmap.h"
#include "report/line_chart.h"
#include "report/patch_overlay.h"
